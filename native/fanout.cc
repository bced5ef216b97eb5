#include "fanout.h"

#include <algorithm>
#include <cstring>

#include "addon_data.h"
#include "util/args.h"
#include "util/errors.h"

namespace npmu {

namespace {

constexpr uint32_t kMaxLegs = 8;
constexpr uint32_t kMaxItems = 65536;

// A byte offset given as a safe-integer number or a bigint.
uint64_t ToOffset(Napi::Env env, Napi::Value v, const std::string& name) {
  if (v.IsBigInt()) return ToU64(env, v, name);
  return static_cast<uint64_t>(ToInteger(env, v, name, 0, kMaxSafeInteger));
}

// The source of a write: one MR for every leg, one MR per leg, or (inline)
// the bytes of an ArrayBufferView.
struct Source {
  std::vector<MemoryRegion*> mrs;  // per leg (size legs) when registered
  std::vector<Napi::Object> objs;
  const uint8_t* bytes = nullptr;  // inline source
  size_t byteLength = 0;
  bool isInline = false;
};

void CheckMr(Napi::Env env, MemoryRegion* m, const std::string& name) {
  if (m->res()->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", name + " is closed");
  if (m->Detached())
    ThrowNpmu(env, "ERR_NPMU_DETACHED", name + "'s ArrayBuffer was detached (transferred away)");
}

}  // namespace

Napi::Function Fanout::Define(Napi::Env env) {
  return DefineClass(env, "Fanout",
                     {
                         InstanceMethod<&Fanout::Write>("write"),
                         InstanceMethod<&Fanout::Writev>("writev"),
                         InstanceMethod<&Fanout::Read>("read"),
                         InstanceAccessor<&Fanout::Legs>("legs"),
                         InstanceAccessor<&Fanout::MaxInline>("maxInline"),
                     });
}

Fanout* Fanout::Unwrap(Napi::Object o) { return UnwrapThis<Fanout>(o, kFanoutTag, "Fanout"); }

// new Fanout([{ep, rkey, remoteAddr, length, fence?}, ...])
Fanout::Fanout(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Fanout>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowArgType(env, "legs", "an instance of Array", info[0]);
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n < 1 || n > kMaxLegs)
    ThrowOutOfRange(env, "legs.length", "in [1, " + std::to_string(kMaxLegs) + "]", Napi::Number::New(env, n));
  legs_.resize(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string name = "legs[" + std::to_string(i) + "]";
    Napi::Value v = arr.Get(i);
    if (!v.IsObject() || v.IsArray() || v.IsFunction()) ThrowArgType(env, name, "of type object", v);
    Napi::Object o = v.As<Napi::Object>();
    FanoutLeg& leg = legs_[i];
    Napi::Value epV = Prop(o, "ep");
    Endpoint* ep = UnwrapTagged<Endpoint>(env, epV, kEndpointTag, name + ".ep", "Endpoint");
    leg.ep = ep->res();
    leg.rkey = static_cast<uint32_t>(ToInteger(env, Prop(o, "rkey"), name + ".rkey", 0, 0xffffffffLL));
    leg.base = ToU64(env, Prop(o, "remoteAddr"), name + ".remoteAddr");
    leg.length = ToOffset(env, Prop(o, "length"), name + ".length");
    if (leg.length == 0 || leg.base + leg.length < leg.base)
      ThrowOutOfRange(env, name + ".length", "> 0, with remoteAddr + length < 2^64", Prop(o, "length"));
    Napi::Value fV = Prop(o, "fence");
    if (!fV.IsUndefined()) {
      MemoryRegion* m = UnwrapTagged<MemoryRegion>(env, fV, kMrTag, name + ".fence", "MemoryRegion");
      auto mr = m->res();
      if (mr->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", name + ".fence is closed");
      if (mr->length < 8) ThrowArgValue(env, name + ".fence", "must be at least 8 bytes long", fV);
      if (!(mr->access & IBV_ACCESS_LOCAL_WRITE))
        ThrowArgValue(env, name + ".fence", "needs Access.LOCAL_WRITE to receive data", fV);
      if (leg.ep->pd() && mr->pd != leg.ep->pd())
        ThrowArgValue(env, name + ".fence", "must be registered on the leg endpoint's protection domain", fV);
      leg.fence = mr;
      leg.fenceObj = Napi::Persistent(fV.As<Napi::Object>());
    }
    Napi::Value faV = Prop(o, "fenceAddr");
    if (!faV.IsUndefined()) {
      if (!leg.fence) ThrowArgValue(env, name + ".fenceAddr", "needs a fence buffer (the atomic's 8-byte result lands there)", faV);
      leg.fenceAddr = ToU64(env, faV, name + ".fenceAddr");
      if (leg.fenceAddr & 7)
        Throw(env, Failure::Npmu("ERR_NPMU_NOT_ALIGNED", name + ".fenceAddr must be 8-byte aligned (an atomic's target)"));
      leg.fenceRkey = static_cast<uint32_t>(ToInteger(env, Prop(o, "fenceRkey"), name + ".fenceRkey", 0, 0xffffffffLL));
      leg.atomicFence = true;
    }
    leg.epObj = Napi::Persistent(epV.As<Napi::Object>());
  }
  info.This().As<Napi::Object>().TypeTag(&kFanoutTag);
}

Fanout::~Fanout() {
  bool alive = legs_.empty() || legs_[0].ep->reg->alive;
  if (!alive) {
    for (FanoutLeg& l : legs_) {
      l.epObj.SuppressDestruct();
      l.fenceObj.SuppressDestruct();
    }
  }
}

Napi::Value Fanout::Legs(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(legs_.size()));
}

// The largest write every leg can send inline (from unregistered memory).
Napi::Value Fanout::MaxInline(const Napi::CallbackInfo& info) {
  uint32_t m = static_cast<uint32_t>(WrRecord::kInline);
  for (const FanoutLeg& l : legs_) m = std::min(m, l.ep->maxInline());
  return Napi::Number::New(info.Env(), m);
}

Napi::Value Fanout::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<Item> items(1);
  Item& it = items[0];
  it.srcOffset = static_cast<size_t>(ToInteger(env, info[1], "srcOffset", 0, kMaxSafeInteger));
  it.length = static_cast<size_t>(ToInteger(env, info[2], "length", 1, 0x7fffffff));
  it.remoteOffset = ToOffset(env, info[3], "remoteOffset");
  return PostWrites(env, info[0], items, info[4], info[5]);
}

Napi::Value Fanout::Writev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value opsV = info[1];
  if (!opsV.IsTypedArray() || opsV.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    ThrowArgType(env, "ops", "an instance of Float64Array", opsV);
  Napi::Float64Array ops = opsV.As<Napi::Float64Array>();
  size_t len = ops.ElementLength();
  if (len == 0 || len % 3 != 0)
    ThrowArgValue(env, "ops", "must hold [srcOffset, length, remoteOffset] triples (a non-zero multiple of 3 numbers)",
                  opsV);
  size_t k = len / 3;
  if (k > kMaxItems)
    ThrowOutOfRange(env, "ops.length / 3", "<= " + std::to_string(kMaxItems), Napi::Number::New(env, k));
  std::vector<Item> items(k);
  auto integer = [&](double d, size_t i, const char* what, double min, double max) {
    if (!(d >= min && d <= max) || d != static_cast<double>(static_cast<int64_t>(d)))
      ThrowOutOfRange(env, "ops[" + std::to_string(i) + "] (" + what + ")",
                      "an integer in [" + std::to_string(static_cast<int64_t>(min)) + ", " +
                          std::to_string(static_cast<int64_t>(max)) + "]",
                      Napi::Number::New(env, d));
    return static_cast<uint64_t>(d);
  };
  // Copy first: a getter cannot run between here and the post, but keep the
  // numbers out of the array the caller may reuse.
  for (size_t i = 0; i < k; i++) {
    items[i].srcOffset = static_cast<size_t>(integer(ops[3 * i], 3 * i, "srcOffset", 0, kMaxSafeInteger));
    items[i].length = static_cast<size_t>(integer(ops[3 * i + 1], 3 * i + 1, "length", 1, 0x7fffffff));
    items[i].remoteOffset = integer(ops[3 * i + 2], 3 * i + 2, "remoteOffset", 0, kMaxSafeInteger);
  }
  return PostWrites(env, info[0], items, info[2], info[3]);
}

Napi::Value Fanout::PostWrites(Napi::Env env, Napi::Value srcV, const std::vector<Item>& items, Napi::Value maskV,
                               Napi::Value fenceV) {
  const size_t nLegs = legs_.size();
  const uint32_t all = (1u << nLegs) - 1;
  uint32_t mask = static_cast<uint32_t>(OptInteger(env, maskV, "legMask", 1, all, all));
  bool fence = OptBool(env, fenceV, "fence", false);

  // The source, checked against every selected leg.
  Source src;
  if (srcV.IsTypedArray() || srcV.IsDataView()) {
    src.isInline = true;
    if (srcV.IsTypedArray()) {
      Napi::TypedArray ta = srcV.As<Napi::TypedArray>();
      Napi::ArrayBuffer ab = ta.ArrayBuffer();
      if (ab.IsDetached()) ThrowNpmu(env, "ERR_NPMU_DETACHED", "src's ArrayBuffer was detached");
      src.bytes = static_cast<const uint8_t*>(ab.Data()) + ta.ByteOffset();
      src.byteLength = ta.ByteLength();
    } else {
      Napi::DataView dv = srcV.As<Napi::DataView>();
      Napi::ArrayBuffer ab = dv.ArrayBuffer();
      if (ab.IsDetached()) ThrowNpmu(env, "ERR_NPMU_DETACHED", "src's ArrayBuffer was detached");
      src.bytes = static_cast<const uint8_t*>(ab.Data()) + dv.ByteOffset();
      src.byteLength = dv.ByteLength();
    }
  } else if (srcV.IsArray()) {
    Napi::Array a = srcV.As<Napi::Array>();
    if (a.Length() != nLegs)
      ThrowArgValue(env, "src", "must hold one MemoryRegion per leg (" + std::to_string(nLegs) + ")", srcV);
    for (uint32_t i = 0; i < nLegs; i++) {
      Napi::Value v = a.Get(i);
      src.mrs.push_back(UnwrapTagged<MemoryRegion>(env, v, kMrTag, "src[" + std::to_string(i) + "]", "MemoryRegion"));
      src.objs.push_back(v.As<Napi::Object>());
    }
  } else {
    MemoryRegion* m = UnwrapTagged<MemoryRegion>(env, srcV, kMrTag, "src",
                                                 "MemoryRegion, an Array of them or an ArrayBufferView");
    src.mrs.assign(nLegs, m);
    src.objs.assign(nLegs, srcV.As<Napi::Object>());
  }
  uint32_t maxInline = static_cast<uint32_t>(WrRecord::kInline);
  for (size_t l = 0; l < nLegs; l++)
    if (mask & (1u << l)) maxInline = std::min(maxInline, legs_[l].ep->maxInline());
  for (size_t i = 0; i < items.size(); i++) {
    const Item& it = items[i];
    std::string what = items.size() == 1 ? std::string() : " (item " + std::to_string(i) + ")";
    if (src.isInline) {
      if (it.srcOffset > src.byteLength || it.length > src.byteLength - it.srcOffset)
        ThrowOutOfRange(env, "length", "srcOffset + length <= src.byteLength (" + std::to_string(src.byteLength) + ")" + what,
                        Napi::Number::New(env, static_cast<double>(it.length)));
      if (it.length > maxInline)
        ThrowOutOfRange(env, "length",
                        "<= " + std::to_string(maxInline) +
                            " (the inline limit) when src is not a MemoryRegion" + what,
                        Napi::Number::New(env, static_cast<double>(it.length)));
    }
    for (size_t l = 0; l < nLegs; l++) {
      if (!(mask & (1u << l))) continue;
      const FanoutLeg& leg = legs_[l];
      if (it.remoteOffset > leg.length || it.length > leg.length - it.remoteOffset)
        ThrowOutOfRange(env, "remoteOffset",
                        "remoteOffset + length <= the window of leg " + std::to_string(l) + " (" +
                            std::to_string(leg.length) + " bytes)" + what,
                        Napi::Number::New(env, static_cast<double>(it.remoteOffset)));
      if (!src.isInline) {
        const MrRes& mr = *src.mrs[l]->res();
        if (it.srcOffset > mr.length || it.length > mr.length - it.srcOffset)
          ThrowOutOfRange(env, "length",
                          "srcOffset + length <= the MemoryRegion's length (" + std::to_string(mr.length) + ")" + what,
                          Napi::Number::New(env, static_cast<double>(it.length)));
      }
    }
  }
  for (size_t l = 0; l < nLegs; l++) {
    if (!(mask & (1u << l))) continue;
    if (fence && !legs_[l].fence)
      ThrowArgValue(env, "fence", "needs a fence buffer on leg " + std::to_string(l), Napi::Boolean::New(env, fence));
    if (fence && legs_[l].fence->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "the fence buffer of leg " + std::to_string(l) + " is closed");
    if (!src.isInline) {
      MemoryRegion* m = src.mrs[l];
      CheckMr(env, m, "src");
      if (legs_[l].ep->pd() && m->res()->pd != legs_[l].ep->pd())
        ThrowArgValue(env, "src", "must be registered on the protection domain of leg " + std::to_string(l), src.objs[l]);
    }
  }

  const size_t perLeg = items.size() + (fence ? 1 : 0);
  auto batch = std::make_shared<Batch>(env, Batch::Kind::Legs, nLegs * perLeg);
  batch->groups = nLegs;
  batch->perGroup = perLeg;
  size_t posted = 0;
  for (size_t l = 0; l < nLegs; l++)
    if (mask & (1u << l)) posted += perLeg;
  batch->remaining = posted;
  Napi::Promise p = batch->deferred.Promise();

  std::vector<std::shared_ptr<size_t>> pending(nLegs);
  std::vector<WrRecord*> recs;
  recs.reserve(perLeg);
  for (size_t l = 0; l < nLegs; l++) {
    if (!(mask & (1u << l))) continue;
    FanoutLeg& leg = legs_[l];
    if (!leg.ep->connected()) {
      for (size_t j = 0; j < perLeg; j++) {
        Result r;
        r.failure = Failure::Npmu("ERR_NPMU_ENDPOINT_STATE",
                                  std::string("endpoint is ") + leg.ep->StateName() + ", not connected");
        batch->Complete(env, l * perLeg + j, std::move(r));
      }
      continue;
    }
    recs.clear();
    for (size_t i = 0; i < items.size(); i++) {
      const Item& it = items[i];
      auto* rec = new WrRecord();
      rec->op = Op::Write;
      rec->batch = batch;
      rec->slot = l * perLeg + i;
      ibv_send_wr& w = rec->swr;
      w.opcode = IBV_WR_RDMA_WRITE;
      w.num_sge = 1;
      w.send_flags = IBV_SEND_SIGNALED;
      w.wr.rdma.remote_addr = leg.base + it.remoteOffset;
      w.wr.rdma.rkey = leg.rkey;
      rec->sge.length = static_cast<uint32_t>(it.length);
      if (src.isInline) {
        memcpy(rec->inl.data(), src.bytes + it.srcOffset, it.length);
        rec->sge.addr = reinterpret_cast<uintptr_t>(rec->inl.data());
        rec->sge.lkey = 0;
        w.send_flags |= IBV_SEND_INLINE;
      } else {
        const auto& mr = src.mrs[l]->res();
        rec->mr = mr;
        rec->local = mr->addr + it.srcOffset;
        rec->sge.addr = reinterpret_cast<uintptr_t>(mr->addr + it.srcOffset);
        rec->sge.lkey = mr->lkey;
        if (it.length <= leg.ep->maxInline()) w.send_flags |= IBV_SEND_INLINE;
        // Records of one leg complete in order: the last one holds the MR object.
        if (i + 1 == items.size()) rec->mrObj = Napi::Persistent(src.objs[l]);
      }
      recs.push_back(rec);
    }
    if (fence && leg.atomicFence) {
      auto* rec = new WrRecord();
      rec->op = Op::Faa;
      rec->batch = batch;
      rec->slot = l * perLeg + items.size();
      rec->mr = leg.fence;  // held by the Fanout's reference to its object
      rec->local = leg.fence->addr;
      rec->sge.addr = reinterpret_cast<uintptr_t>(leg.fence->addr);
      rec->sge.length = 8;
      rec->sge.lkey = leg.fence->lkey;
      ibv_send_wr& w = rec->swr;
      w.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
      w.num_sge = 1;
      w.send_flags = IBV_SEND_SIGNALED;
      w.wr.atomic.remote_addr = leg.fenceAddr;
      w.wr.atomic.rkey = leg.fenceRkey;
      w.wr.atomic.compare_add = 0;
      recs.push_back(rec);
    } else if (fence) {
      const Item& last = items.back();
      size_t k = std::min<size_t>(8, last.length);
      auto* rec = new WrRecord();
      rec->op = Op::Read;
      rec->batch = batch;
      rec->slot = l * perLeg + items.size();
      rec->mr = leg.fence;  // held by the Fanout's reference to its object
      rec->local = leg.fence->addr;
      rec->sge.addr = reinterpret_cast<uintptr_t>(leg.fence->addr);
      rec->sge.length = static_cast<uint32_t>(k);
      rec->sge.lkey = leg.fence->lkey;
      ibv_send_wr& w = rec->swr;
      w.opcode = IBV_WR_RDMA_READ;
      w.num_sge = 1;
      w.send_flags = IBV_SEND_SIGNALED;
      w.wr.rdma.remote_addr = leg.base + last.remoteOffset + last.length - k;
      w.wr.rdma.rkey = leg.rkey;
      recs.push_back(rec);
    }
    pending[l] = leg.ep->PostRecords(env, recs.data(), recs.size());
  }
  // Every leg was posted before any is polled; now reap each (busy-poll legs
  // spin until their own work is in, event-mode ones poll once and arm).
  for (size_t l = 0; l < nLegs; l++)
    if (pending[l]) legs_[l].ep->Reap(env, pending[l]);
  return p;
}

// read(dst, dstOffset, length, remoteOffset, leg)
Napi::Value Fanout::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MemoryRegion* m = UnwrapTagged<MemoryRegion>(env, info[0], kMrTag, "dst", "MemoryRegion");
  size_t off = static_cast<size_t>(ToInteger(env, info[1], "dstOffset", 0, kMaxSafeInteger));
  size_t len = static_cast<size_t>(ToInteger(env, info[2], "length", 1, 0x7fffffff));
  uint64_t roff = ToOffset(env, info[3], "remoteOffset");
  size_t l = static_cast<size_t>(ToInteger(env, info[4], "leg", 0, static_cast<int64_t>(legs_.size()) - 1));
  FanoutLeg& leg = legs_[l];
  auto mr = m->res();
  CheckMr(env, m, "dst");
  if (!(mr->access & IBV_ACCESS_LOCAL_WRITE)) ThrowArgValue(env, "dst", "needs Access.LOCAL_WRITE to receive data", info[0]);
  if (leg.ep->pd() && mr->pd != leg.ep->pd())
    ThrowArgValue(env, "dst", "must be registered on the protection domain of leg " + std::to_string(l), info[0]);
  if (off > mr->length || len > mr->length - off)
    ThrowOutOfRange(env, "length", "dstOffset + length <= the MemoryRegion's length (" + std::to_string(mr->length) + ")",
                    info[2]);
  if (roff > leg.length || len > leg.length - roff)
    ThrowOutOfRange(env, "remoteOffset",
                    "remoteOffset + length <= the window of leg " + std::to_string(l) + " (" +
                        std::to_string(leg.length) + " bytes)",
                    info[3]);
  auto batch = std::make_shared<Batch>(env, Batch::Kind::Legs, legs_.size());
  batch->groups = legs_.size();
  batch->perGroup = 1;
  batch->remaining = 1;
  Napi::Promise p = batch->deferred.Promise();
  if (!leg.ep->connected()) {
    Result r;
    r.failure = Failure::Npmu("ERR_NPMU_ENDPOINT_STATE",
                              std::string("endpoint is ") + leg.ep->StateName() + ", not connected");
    batch->Complete(env, l, std::move(r));
    return p;
  }
  auto* rec = new WrRecord();
  rec->op = Op::Read;
  rec->batch = batch;
  rec->slot = l;
  rec->mr = mr;
  rec->mrObj = Napi::Persistent(info[0].As<Napi::Object>());
  rec->local = mr->addr + off;
  rec->sge.addr = reinterpret_cast<uintptr_t>(mr->addr + off);
  rec->sge.length = static_cast<uint32_t>(len);
  rec->sge.lkey = mr->lkey;
  rec->swr.opcode = IBV_WR_RDMA_READ;
  rec->swr.num_sge = 1;
  rec->swr.send_flags = IBV_SEND_SIGNALED;
  rec->swr.wr.rdma.remote_addr = leg.base + roff;
  rec->swr.wr.rdma.rkey = leg.rkey;
  std::shared_ptr<EndpointRes> keep = leg.ep;
  auto pend = keep->PostRecords(env, &rec, 1);
  keep->Reap(env, pend);
  return p;
}

}  // namespace npmu
