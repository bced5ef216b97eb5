#include "pd.h"

#include <cerrno>

#include "util/args.h"

namespace npmu {

std::shared_ptr<PdRes> PdRes::Alloc(std::shared_ptr<ContextRes> ctx, Failure* failure) {
  if (ctx->closed) {
    *failure = Failure::Npmu("ERR_NPMU_CLOSED", "context is closed");
    return nullptr;
  }
  errno = 0;
  ibv_pd* pd = ibv_alloc_pd(ctx->ctx);
  if (!pd) {
    *failure = Failure::Errno(errno ? errno : ENOMEM, "ibv_alloc_pd");
    return nullptr;
  }
  auto res = std::make_shared<PdRes>();
  res->reg = ctx->reg;
  res->ctx = std::move(ctx);
  res->pd = pd;
  res->ctx->children++;
  res->reg->pds.insert(res.get());
  return res;
}

void PdRes::RemoveChild() {
  children--;
  if (autoClose && children <= 0) Close();
}

void PdRes::Close() {
  if (closed) return;
  closed = true;
  if (pd) ibv_dealloc_pd(pd);
  pd = nullptr;
  ctx->children--;
  if (ownsCtx && ctx->children <= 0) ctx->Close();
  reg->pds.erase(this);
}

PdRes::~PdRes() { Close(); }

Napi::Function ProtectionDomain::Define(Napi::Env env) {
  return DefineClass(env, "ProtectionDomain",
                     {
                         InstanceAccessor<&ProtectionDomain::GetContext>("context"),
                         InstanceAccessor<&ProtectionDomain::Closed>("closed"),
                         InstanceMethod<&ProtectionDomain::Close>("close"),
                     });
}

Napi::Object ProtectionDomain::Wrap(Napi::Env env, std::shared_ptr<PdRes> res) {
  auto* holder = new std::shared_ptr<PdRes>(std::move(res));
  try {
    Napi::Object o = GetData(env)->pdCtor.New({MakeToken(env, holder)});
    delete holder;
    return o;
  } catch (...) {
    delete holder;
    throw;
  }
}

ProtectionDomain::ProtectionDomain(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<ProtectionDomain>(info) {
  Napi::Env env = info.Env();
  if (info.Length() >= 1 && info[0].IsExternal()) {
    res_ = *static_cast<std::shared_ptr<PdRes>*>(TakeToken(info, "ProtectionDomain"));
  } else {
    Context* ctx = UnwrapTagged<Context>(env, info[0], kContextTag, "ctx", "Context");
    if (ctx->res()->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "context is closed");
    Failure f;
    res_ = PdRes::Alloc(ctx->res(), &f);
    if (!res_) Throw(env, f);
    context_ = Napi::Persistent(info[0].As<Napi::Object>());
  }
  info.This().As<Napi::Object>().TypeTag(&kPdTag);
}

Napi::Value ProtectionDomain::GetContext(const Napi::CallbackInfo& info) {
  if (context_.IsEmpty()) context_ = Napi::Persistent(Context::Wrap(info.Env(), res_->ctx));
  return context_.Value();
}

Napi::Value ProtectionDomain::Closed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), res_->closed);
}

Napi::Value ProtectionDomain::Close(const Napi::CallbackInfo& info) {
  if (res_->closed) return info.Env().Undefined();
  if (res_->children > 0)
    ThrowNpmu(info.Env(), "ERR_NPMU_BUSY",
              "protection domain has " + std::to_string(res_->children) + " open MR(s)/endpoint(s)");
  res_->Close();
  return info.Env().Undefined();
}

}  // namespace npmu
