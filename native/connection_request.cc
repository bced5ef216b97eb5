#include "connection_request.h"

#include "context.h"
#include "endpoint.h"
#include "listener.h"
#include "util/args.h"

namespace npmu {

namespace {
constexpr size_t kMaxAcceptPrivateData = 196;
constexpr size_t kMaxRejectPrivateData = 148;
}  // namespace

void RequestRes::Detach() {
  if (timer) timer->Close();
  timer = nullptr;
  if (auto l = listener.lock()) l->pending.erase(id);
}

void RequestRes::Reject(const std::vector<uint8_t>& data) {
  if (state != State::Pending) return;
  state = State::Rejected;
  auto keep = shared_from_this();
  Detach();
  rdma_reject(id, data.empty() ? nullptr : data.data(), static_cast<uint8_t>(data.size()));
  rdma_destroy_id(id);
  id = nullptr;
}

void RequestRes::Gone() {
  if (state != State::Pending) return;
  state = State::Gone;
  auto keep = shared_from_this();
  Detach();
  rdma_destroy_id(id);
  id = nullptr;
}

rdma_cm_id* RequestRes::Take() {
  state = State::Accepted;
  auto keep = shared_from_this();
  Detach();
  rdma_cm_id* t = id;
  id = nullptr;
  return t;
}

RequestRes::~RequestRes() {
  if (id) rdma_destroy_id(id);
}

Napi::Function ConnectionRequest::Define(Napi::Env env) {
  return DefineClass(env, "ConnectionRequest",
                     {
                         InstanceAccessor<&ConnectionRequest::RemoteAddress>("remoteAddress"),
                         InstanceAccessor<&ConnectionRequest::RemotePort>("remotePort"),
                         InstanceAccessor<&ConnectionRequest::PrivateData>("privateData"),
                         InstanceMethod<&ConnectionRequest::Accept>("accept"),
                         InstanceMethod<&ConnectionRequest::Reject>("reject"),
                     });
}

Napi::Object ConnectionRequest::Wrap(Napi::Env env, std::shared_ptr<RequestRes> res) {
  auto* holder = new std::shared_ptr<RequestRes>(std::move(res));
  try {
    Napi::Object o = GetData(env)->requestCtor.New({MakeToken(env, holder)});
    delete holder;
    return o;
  } catch (...) {
    delete holder;
    throw;
  }
}

ConnectionRequest::ConnectionRequest(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ConnectionRequest>(info) {
  res_ = *static_cast<std::shared_ptr<RequestRes>*>(TakeToken(info, "ConnectionRequest"));
  info.This().As<Napi::Object>().TypeTag(&kRequestTag);
}

Napi::Value ConnectionRequest::RemoteAddress(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), res_->remoteAddress);
}
Napi::Value ConnectionRequest::RemotePort(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), res_->remotePort);
}
Napi::Value ConnectionRequest::PrivateData(const Napi::CallbackInfo& info) {
  const auto& d = res_->privateData;
  if (d.empty()) return Napi::Buffer<uint8_t>::New(info.Env(), 0);
  return Napi::Buffer<uint8_t>::Copy(info.Env(), d.data(), d.size());
}

Napi::Value ConnectionRequest::Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object opts = OptObject(env, info[0], "opts");
  EndpointOptions eo = ParseEndpointOptions(env, opts, "opts.");
  Napi::Value pdV = Prop(opts, "privateData");
  std::vector<uint8_t> data;
  if (!pdV.IsUndefined()) data = ToBytes(env, pdV, "opts.privateData", kMaxAcceptPrivateData);

  auto reject = [&](const Failure& f) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(MakeError(env, f).Value());
    return d.Promise();
  };
  if (res_->state != RequestRes::State::Pending) {
    const char* why = res_->state == RequestRes::State::Accepted   ? "already accepted"
                      : res_->state == RequestRes::State::Rejected ? "already rejected (or timed out)"
                                                                   : "withdrawn by the connector";
    return reject(Failure::Npmu("ERR_NPMU_CLOSED", std::string("connection request ") + why));
  }
  Napi::Object pdObj = eo.pdObj;
  Failure f;
  auto ep = EndpointRes::Create(res_->reg, eo, &f);
  if (!ep) {
    res_->Reject({});
    return reject(f);
  }
  if (!pdObj.IsEmpty()) ep->pdObj = Napi::Persistent(pdObj);
  uint8_t ini = res_->initiatorDepth, rr = res_->responderResources;
  std::vector<uint8_t> peerData = res_->privateData;
  rdma_cm_id* id = res_->Take();
  return ep->StartAccept(env, id, ini, rr, std::move(data), std::move(peerData));
}

Napi::Value ConnectionRequest::Reject(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> data;
  if (!info[0].IsUndefined()) data = ToBytes(env, info[0], "privateData", kMaxRejectPrivateData);
  if (res_->state == RequestRes::State::Accepted)
    ThrowNpmu(env, "ERR_NPMU_CLOSED", "connection request already accepted");
  res_->Reject(data);  // idempotent once rejected/gone
  return env.Undefined();
}

}  // namespace npmu
