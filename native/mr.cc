#include "mr.h"

#include <unistd.h>

#include <cerrno>

#include "util/args.h"

namespace npmu {

void MrRes::Close() {
  if (closed) return;
  closed = true;
  if (mr) ibv_dereg_mr(mr);
  mr = nullptr;
  pd->RemoveChild();
  if (mapping) mapping->children--;
  reg->mrs.erase(this);
}

MrRes::~MrRes() { Close(); }

Napi::Function MemoryRegion::Define(Napi::Env env) {
  return DefineClass(env, "MemoryRegion",
                     {
                         InstanceAccessor<&MemoryRegion::Lkey>("lkey"),
                         InstanceAccessor<&MemoryRegion::Rkey>("rkey"),
                         InstanceAccessor<&MemoryRegion::Iova>("iova"),
                         InstanceAccessor<&MemoryRegion::Length>("length"),
                         InstanceAccessor<&MemoryRegion::Access>("access"),
                         InstanceAccessor<&MemoryRegion::Closed>("closed"),
                         InstanceMethod<&MemoryRegion::Close>("close"),
                     });
}

MemoryRegion::MemoryRegion(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MemoryRegion>(info) {
  Napi::Env env = info.Env();
  ProtectionDomain* pdw = UnwrapTagged<ProtectionDomain>(env, info[0], kPdTag, "pd", "ProtectionDomain");
  std::shared_ptr<PdRes> pd = pdw->res();

  // The source: bytes [base, base + size) and what keeps them alive.
  Napi::Value src = info[1];
  uint8_t* base = nullptr;
  size_t size = 0;
  std::shared_ptr<MappingRes> mapping;
  Napi::ArrayBuffer jsAb;  // the JS memory's ArrayBuffer, if the source is JS memory
  if (src.IsTypedArray()) {
    Napi::TypedArray ta = src.As<Napi::TypedArray>();
    jsAb = ta.ArrayBuffer();
    base = static_cast<uint8_t*>(jsAb.Data()) + ta.ByteOffset();
    size = ta.ByteLength();
  } else if (src.IsDataView()) {
    Napi::DataView dv = src.As<Napi::DataView>();
    jsAb = dv.ArrayBuffer();
    base = static_cast<uint8_t*>(jsAb.Data()) + dv.ByteOffset();
    size = dv.ByteLength();
  } else if (src.IsArrayBuffer()) {
    jsAb = src.As<Napi::ArrayBuffer>();
    base = static_cast<uint8_t*>(jsAb.Data());
    size = jsAb.ByteLength();
  } else if (src.IsObject() && src.As<Napi::Object>().CheckTypeTag(&kMappingTag)) {
    Mapping* m = Mapping::Unwrap(src.As<Napi::Object>());
    if (!m) ThrowArgType(env, "source", "an ArrayBuffer, an ArrayBufferView or a Mapping", src);
    mapping = m->res();
    if (mapping->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "mapping is closed");
    base = mapping->addr;
    size = mapping->length;
  } else {
    ThrowArgType(env, "source", "an ArrayBuffer, an ArrayBufferView or a Mapping", src);
  }

  Napi::Object opts = OptObject(env, info[2], "opts");
  // (after the option getters too, which may run JS)
  auto checkAttached = [&]() {
    if (!jsAb.IsEmpty() && jsAb.IsDetached())
      ThrowNpmu(env, "ERR_NPMU_DETACHED", "the memory to register is a detached ArrayBuffer");
  };
  checkAttached();
  int64_t srcLen = static_cast<int64_t>(size);
  int64_t offset = OptInteger(env, Prop(opts, "offset"), "opts.offset", 0, srcLen, 0);
  int64_t length = OptInteger(env, Prop(opts, "length"), "opts.length", 0, srcLen - offset, srcLen - offset);
  Napi::Value iovaV = Prop(opts, "iova");
  uint8_t* addr = base ? base + offset : nullptr;
  uint64_t iova = iovaV.IsUndefined() ? reinterpret_cast<uintptr_t>(addr) : ToU64(env, iovaV, "opts.iova");
  int access = static_cast<int>(
      OptInteger(env, Prop(opts, "access"), "opts.access", 0, 15, IBV_ACCESS_LOCAL_WRITE));
  if (length == 0 || addr == nullptr)
    ThrowOutOfRange(env, "opts.length", "> 0 (an empty region cannot be registered)",
                    Napi::Number::New(env, static_cast<double>(length)));
  if (iova > UINT64_MAX - static_cast<uint64_t>(length) + 1)
    ThrowOutOfRange(env, "opts.iova", "such that iova + length <= 2n ** 64n", iovaV);
  // The kernel (ib_uverbs_reg_mr) insists that the iova and the address have
  // the same offset within a page; say so instead of a bare EINVAL.
  uint64_t pageMask = static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) - 1;
  if ((iova & pageMask) != (reinterpret_cast<uintptr_t>(addr) & pageMask))
    Throw(env, Failure::Npmu("ERR_NPMU_NOT_ALIGNED",
                             "opts.iova must have the same offset within a " + std::to_string(pageMask + 1) +
                                 "-byte page as the registered memory (which starts at page offset " +
                                 std::to_string(reinterpret_cast<uintptr_t>(addr) & pageMask) + ")",
                             EINVAL, "ibv_reg_mr_iova2"));
  if (pd->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "protection domain is closed");
  checkAttached();
  if (mapping && mapping->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "mapping is closed");
  // Registered memory must not move to another owner (transfer/postMessage):
  // init()'s hook marks it untransferable (for good: V8 cannot undo it).
  if (!jsAb.IsEmpty()) MarkUntransferable(env, jsAb);

  errno = 0;
  ibv_mr* mr = ibv_reg_mr_iova2(pd->pd, addr, static_cast<size_t>(length), iova, static_cast<unsigned>(access));
  if (!mr) ThrowErrno(env, errno ? errno : EINVAL, "ibv_reg_mr_iova2");

  auto res = std::make_shared<MrRes>();
  res->reg = GetData(env)->reg;
  res->pd = pd;
  res->mapping = mapping;
  res->mr = mr;
  res->addr = addr;
  res->length = static_cast<size_t>(length);
  res->iova = iova;
  res->access = access;
  res->lkey = mr->lkey;
  res->rkey = mr->rkey;
  pd->AddChild();
  if (mapping) mapping->children++;
  res->reg->mrs.insert(res.get());
  res_ = res;
  if (!mapping) {
    pin_ = Napi::Persistent(src.As<Napi::Object>());
    ab_ = Napi::Persistent(jsAb);
  }
  info.This().As<Napi::Object>().TypeTag(&kMrTag);
}

MemoryRegion::~MemoryRegion() {
  // Finalizer: in-flight work requests hold a reference to this object, so an
  // MR JS forgot has nothing in flight. After teardown the reaper has closed it.
  if (res_ && !res_->closed && res_->inflight == 0) res_->Close();
  if (res_ && !res_->reg->alive) {
    pin_.SuppressDestruct();
    ab_.SuppressDestruct();
  }
}

bool MemoryRegion::Detached() const {
  if (ab_.IsEmpty()) return false;
  Napi::ArrayBuffer ab = ab_.Value();
  return !ab.IsEmpty() && ab.IsDetached();
}

Napi::Value MemoryRegion::Lkey(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), res_->lkey); }
Napi::Value MemoryRegion::Rkey(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), res_->rkey); }
Napi::Value MemoryRegion::Iova(const Napi::CallbackInfo& info) { return Napi::BigInt::New(info.Env(), res_->iova); }
Napi::Value MemoryRegion::Length(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(res_->length));
}
Napi::Value MemoryRegion::Access(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), res_->access); }
Napi::Value MemoryRegion::Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), res_->closed); }

Napi::Value MemoryRegion::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (res_->closed) return env.Undefined();
  if (res_->inflight > 0)
    ThrowNpmu(env, "ERR_NPMU_BUSY",
              "memory region is the local buffer of " + std::to_string(res_->inflight) + " work request(s) in flight");
  res_->Close();
  pin_.Reset();
  ab_.Reset();
  return env.Undefined();
}

}  // namespace npmu
