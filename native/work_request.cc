#include "work_request.h"

#include "addon_data.h"
#include "util/args.h"

namespace npmu {

const char* OpName(Op op) {
  switch (op) {
    case Op::Write:
      return "write";
    case Op::Read:
      return "read";
    case Op::Send:
      return "send";
    case Op::Recv:
      return "recv";
    case Op::Cas:
      return "cas";
    case Op::Faa:
      return "faa";
  }
  return "?";
}

void CheckSlice(Napi::Env env, WrSpec& s, Napi::Value mr, Napi::Value offset, Napi::Value length,
                const std::string& prefix) {
  MemoryRegion* m = UnwrapTagged<MemoryRegion>(env, mr, kMrTag, prefix + "mr", "MemoryRegion");
  s.mr = m->res();
  s.mrObj = mr.As<Napi::Object>();
  int64_t len = static_cast<int64_t>(s.mr->length);
  s.offset = static_cast<size_t>(ToInteger(env, offset, prefix + "offset", 0, len));
  bool atomic = s.op == Op::Cas || s.op == Op::Faa;
  if (atomic) {
    // atomics carry exactly 8 bytes; `length` may be omitted
    if (!length.IsUndefined()) ToInteger(env, length, prefix + "length", 8, 8);
    if (s.offset + 8 > s.mr->length)
      ThrowOutOfRange(env, prefix + "offset", "<= " + std::to_string(len - 8) + " (8 bytes must fit in the MR)",
                      offset);
    s.length = 8;
  } else {
    s.length = static_cast<size_t>(
        ToInteger(env, length, prefix + "length", 0, std::min<int64_t>(len - static_cast<int64_t>(s.offset), 0x7fffffff)));
  }
  if (s.mr->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "memory region is closed");
  if (m->Detached())
    ThrowNpmu(env, "ERR_NPMU_DETACHED", "the memory region's ArrayBuffer was detached (transferred away)");
}

void CheckRemote(Napi::Env env, WrSpec& s, Napi::Value remoteAddr, Napi::Value rkey, const std::string& prefix) {
  s.remoteAddr = ToU64(env, remoteAddr, prefix + "remoteAddr");
  s.rkey = static_cast<uint32_t>(ToInteger(env, rkey, prefix + "rkey", 0, 0xffffffffLL));
  if ((s.op == Op::Cas || s.op == Op::Faa) && (s.remoteAddr & 7))
    Throw(env, Failure::Npmu("ERR_NPMU_NOT_ALIGNED",
                             prefix + "remoteAddr must be 8-byte aligned for atomics", 0, nullptr));
}

WrSpec ParseWorkRequest(Napi::Env env, Napi::Value v, const std::string& name) {
  if (!v.IsObject()) ThrowArgType(env, name, "of type object", v);
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value opV = Prop(o, "op");
  if (!opV.IsString()) ThrowArgType(env, name + ".op", "of type string", opV);
  std::string op = opV.As<Napi::String>().Utf8Value();
  WrSpec s;
  if (op == "write") s.op = Op::Write;
  else if (op == "read") s.op = Op::Read;
  else if (op == "send") s.op = Op::Send;
  else if (op == "recv") s.op = Op::Recv;
  else if (op == "cas") s.op = Op::Cas;
  else if (op == "faa") s.op = Op::Faa;
  else ThrowArgValue(env, name + ".op", "must be one of 'write', 'read', 'send', 'recv', 'cas', 'faa'", opV);
  std::string p = name + ".";
  CheckSlice(env, s, Prop(o, "mr"), Prop(o, "offset"), Prop(o, "length"), p);
  if (s.op == Op::Write || s.op == Op::Read || s.op == Op::Cas || s.op == Op::Faa)
    CheckRemote(env, s, Prop(o, "remoteAddr"), Prop(o, "rkey"), p);
  if (s.op == Op::Cas) {
    s.compare = ToU64OrNegative(env, Prop(o, "compare"), p + "compare");
    s.swap = ToU64OrNegative(env, Prop(o, "swap"), p + "swap");
  } else if (s.op == Op::Faa) {
    s.compare = ToU64OrNegative(env, Prop(o, "add"), p + "add");
  }
  return s;
}

Batch::Batch(Napi::Env env, Kind k, size_t n)
    : kind(k), deferred(Napi::Promise::Deferred::New(env)), results(n), remaining(n) {}

void Batch::Complete(Napi::Env env, size_t i, Result r) {
  if (i >= results.size() || results[i].done) return;
  r.done = true;
  results[i] = std::move(r);
  if (--remaining == 0) Settle(env);
}

void Batch::Settle(Napi::Env env) {
  if (settled) return;
  settled = true;
  if (kind == Kind::Legs) {
    bool allOk = true;
    for (const Result& r : results)
      if (r.done && !r.ok) allOk = false;
    if (allOk) {
      deferred.Resolve(env.Undefined());
      return;
    }
    Napi::Array arr = Napi::Array::New(env, groups);
    for (size_t g = 0; g < groups; g++) {
      Napi::Value e = env.Undefined();
      for (size_t j = 0; j < perGroup; j++) {
        const Result& r = results[g * perGroup + j];
        if (r.done && !r.ok) {
          e = MakeError(env, r.failure).Value();
          break;
        }
      }
      arr.Set(static_cast<uint32_t>(g), e);
    }
    deferred.Resolve(arr);
    return;
  }
  if (kind != Kind::Results) {
    const Result& r = results[0];
    if (!r.ok) {
      deferred.Reject(MakeError(env, r.failure).Value());
    } else if (kind == Kind::Number) {
      deferred.Resolve(Napi::Number::New(env, r.byteLength));
    } else if (kind == Kind::Value) {
      deferred.Resolve(Napi::BigInt::New(env, r.value));
    } else {
      deferred.Resolve(env.Undefined());
    }
    return;
  }
  Napi::Array arr = Napi::Array::New(env, results.size());
  for (size_t i = 0; i < results.size(); i++) {
    const Result& r = results[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("ok", Napi::Boolean::New(env, r.ok));
    if (r.ok) {
      if (r.hasByteLength) o.Set("byteLength", Napi::Number::New(env, r.byteLength));
      if (r.hasValue) o.Set("value", Napi::BigInt::New(env, r.value));
    } else {
      o.Set("error", MakeError(env, r.failure).Value());
    }
    arr.Set(static_cast<uint32_t>(i), o);
  }
  deferred.Resolve(arr);
}

}  // namespace npmu
