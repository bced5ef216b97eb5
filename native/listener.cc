#include "listener.h"

#include <arpa/inet.h>
#include <fcntl.h>

#include <cerrno>

#include "context.h"
#include "endpoint.h"
#include "util/args.h"

namespace npmu {

namespace {
constexpr uint64_t kDecisionTimeoutMs = 10000;  // undecided requests are rejected
}

std::shared_ptr<ListenerRes> ListenerRes::Create(std::shared_ptr<Registry> reg, const std::string& host, int port,
                                                 int backlog, Failure* f) {
  sockaddr_storage ss;
  if (!ParseAddress(host, port, &ss, f)) return nullptr;
  std::shared_ptr<ListenerRes> l(new ListenerRes());
  l->reg = reg;
  l->host = host;
  errno = 0;
  l->ch_ = rdma_create_event_channel();
  if (!l->ch_) {
    int err = errno ? errno : ENODEV;
    if (err == ENODEV || err == ENOENT || err == ENXIO || err == ENOSYS)
      *f = Failure::Npmu("ERR_NPMU_NO_DEVICE", "no RDMA device: cannot open the rdma_cm event channel", err,
                         "rdma_create_event_channel");
    else
      *f = Failure::Errno(err, "rdma_create_event_channel");
    l->destroyed_ = l->closed = true;
    return nullptr;
  }
  int fl = fcntl(l->ch_->fd, F_GETFL);
  fcntl(l->ch_->fd, F_SETFL, fl | O_NONBLOCK);
  reg->listeners.insert(l.get());
  if (rdma_create_id(l->ch_, &l->id_, l.get(), RDMA_PS_TCP) != 0) {
    l->id_ = nullptr;
    *f = Failure::Errno(errno, "rdma_create_id");
    l->Close();
    return nullptr;
  }
  if (rdma_bind_addr(l->id_, reinterpret_cast<sockaddr*>(&ss)) != 0) {
    int err = errno;
    *f = err == EADDRNOTAVAIL || err == ENODEV
             ? Failure::Npmu("ERR_NPMU_NO_DEVICE", "no RDMA device has address " + host, err, "rdma_bind_addr")
             : Failure::Errno(err, "rdma_bind_addr", host + ":" + std::to_string(port));
    l->Close();
    return nullptr;
  }
  if (rdma_listen(l->id_, backlog) != 0) {
    *f = Failure::Errno(errno, "rdma_listen");
    l->Close();
    return nullptr;
  }
  l->port = ntohs(rdma_get_src_port(l->id_));
  ListenerRes* raw = l.get();
  l->poll_ = UvHandle::Poll(reg, l, l->ch_->fd, [raw](int, int) { raw->OnCmReadable(); });
  if (!l->poll_) {
    *f = Failure::Errno(EINVAL, "uv_poll_init");
    l->Close();
    return nullptr;
  }
  return l;
}

ListenerRes::~ListenerRes() {
  Close();
  if (!reg->alive) onRequest.SuppressDestruct();
}

void ListenerRes::OnCmReadable() {
  auto self = shared_from_this();
  RunCallback(reg.get(), [this](Napi::Env env) {
    dispatchDepth_++;
    CmEvent e;
    while (!closed && CmEvent::Next(ch_, &e)) {
      if (e.type == RDMA_CM_EVENT_CONNECT_REQUEST) {
        OnRequest(env, e);
      } else if (e.id != id_) {
        auto it = pending.find(e.id);
        if (it != pending.end() &&
            (e.type == RDMA_CM_EVENT_DISCONNECTED || e.type == RDMA_CM_EVENT_CONNECT_ERROR ||
             e.type == RDMA_CM_EVENT_REJECTED || e.type == RDMA_CM_EVENT_UNREACHABLE ||
             e.type == RDMA_CM_EVENT_DEVICE_REMOVAL)) {
          auto rq = it->second;
          rq->Gone();
        }
      }
    }
    dispatchDepth_--;
    if (dispatchDepth_ == 0 && destroyPending_) Destroy();
  });
}

void ListenerRes::OnRequest(Napi::Env env, CmEvent& e) {
  auto rq = std::make_shared<RequestRes>();
  rq->reg = reg;
  rq->listener = weak_from_this();
  rq->id = e.id;
  rq->privateData = std::move(e.privateData);
  rq->initiatorDepth = e.initiatorDepth;
  rq->responderResources = e.responderResources;
  rq->remoteAddress = AddrString(rdma_get_peer_addr(e.id));
  rq->remotePort = ntohs(rdma_get_dst_port(e.id));
  pending[e.id] = rq;
  if (onRequest.IsEmpty()) return rq->Reject({});
  RequestRes* raw = rq.get();
  rq->timer = UvHandle::Timer(reg, rq, kDecisionTimeoutMs, [raw](int, int) { raw->Reject({}); });
  rq->timer->Ref(false);
  Napi::Object req = ConnectionRequest::Wrap(env, rq);
  Napi::Value recv = wrapper ? wrapper->Value() : env.Undefined();
  try {
    onRequest.Call(recv, {req});
  } catch (const Napi::Error& err) {
    rq->Reject({});
    napi_fatal_exception(env, err.Value());
  }
}

void ListenerRes::Close() {
  if (closed) return;
  closed = true;
  auto keep = weak_from_this().lock();
  // Undecided requests are rejected first.
  std::map<rdma_cm_id*, std::shared_ptr<RequestRes>> left;
  left.swap(pending);
  for (auto& kv : left) kv.second->Reject({});
  if (dispatchDepth_ > 0)
    destroyPending_ = true;
  else
    Destroy();
}

void ListenerRes::Destroy() {
  if (destroyed_) return;
  destroyed_ = true;
  if (poll_) poll_->Close();
  poll_ = nullptr;
  if (id_) rdma_destroy_id(id_);
  id_ = nullptr;
  if (ch_) rdma_destroy_event_channel(ch_);
  ch_ = nullptr;
  reg->listeners.erase(this);
  if (reg->alive) onRequest.Reset();
  if (wrapper && reg->alive && !reg->reaping) wrapper->DropSelfRef();
}

// ---- Listener (JS) ------------------------------------------------------------

Napi::Function Listener::Define(Napi::Env env) {
  return DefineClass(env, "Listener",
                     {
                         InstanceAccessor<&Listener::Port>("port"),
                         InstanceAccessor<&Listener::Host>("host"),
                         InstanceAccessor<&Listener::GetOnRequest, &Listener::SetOnRequest>("onRequest"),
                         InstanceMethod<&Listener::Close>("close"),
                     });
}

Listener::Listener(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Listener>(info) {
  res_ = *static_cast<std::shared_ptr<ListenerRes>*>(TakeToken(info, "Listener"));
  res_->wrapper = this;
  info.This().As<Napi::Object>().TypeTag(&kListenerTag);
  // Listening: JS may drop the object; the listener stays until close().
  Ref();
  selfRef_ = true;
}

Listener::~Listener() {
  if (!res_) return;
  res_->wrapper = nullptr;
  if (res_->reg->alive) res_->Close();
}

void Listener::DropSelfRef() {
  if (selfRef_) {
    selfRef_ = false;
    Unref();
  }
}

Napi::Value Listener::Port(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), res_->port); }
Napi::Value Listener::Host(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), res_->host); }
Napi::Value Listener::GetOnRequest(const Napi::CallbackInfo& info) {
  if (res_->onRequest.IsEmpty()) return info.Env().Null();
  return res_->onRequest.Value();
}
void Listener::SetOnRequest(const Napi::CallbackInfo& info, const Napi::Value& v) {
  if (v.IsNull() || v.IsUndefined()) {
    res_->onRequest.Reset();
    return;
  }
  if (!v.IsFunction()) ThrowArgType(info.Env(), "onRequest", "of type function or null", v);
  if (res_->closed) return;
  res_->onRequest = Napi::Persistent(v.As<Napi::Function>());
}

Napi::Value Listener::Close(const Napi::CallbackInfo& info) {
  std::shared_ptr<ListenerRes> keep = res_;
  keep->Close();
  return info.Env().Undefined();
}

Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object opts = OptObject(env, info[0], "opts");
  Napi::Value hostV = Prop(opts, "host");
  std::string host = hostV.IsUndefined() ? "0.0.0.0" : ToStringArg(env, hostV, "opts.host");
  int port = static_cast<int>(OptInteger(env, Prop(opts, "port"), "opts.port", 0, 65535, 0));
  int backlog = static_cast<int>(OptInteger(env, Prop(opts, "backlog"), "opts.backlog", 1, 65535, 64));
  Failure f;
  auto l = ListenerRes::Create(GetData(env)->reg, host, port, backlog, &f);
  if (!l) Throw(env, f);
  auto* holder = new std::shared_ptr<ListenerRes>(l);
  try {
    Napi::Object o = GetData(env)->listenerCtor.New({MakeToken(env, holder)});
    delete holder;
    return o;
  } catch (...) {
    delete holder;
    l->Close();
    throw;
  }
}

}  // namespace npmu
