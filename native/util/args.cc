#include "util/args.h"

#include <cmath>
#include <cstring>

#include "util/errors.h"

namespace npmu {

void ThrowInvalidThis(Napi::Env env, const char* typeName) {
  Napi::TypeError e = Napi::TypeError::New(env, std::string("Value of \"this\" must be of type ") + typeName);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_THIS"));
  throw e;
}

void ThrowArgTypeExt(Napi::Env env, const std::string& name, const std::string& expected,
                     Napi::Value received) {
  ThrowArgType(env, name, expected, received);
}

namespace {
std::string RangeText(int64_t min, int64_t max) {
  if (max == kMaxSafeInteger) return "an integer >= " + std::to_string(min);
  return "an integer >= " + std::to_string(min) + " and <= " + std::to_string(max);
}
}  // namespace

int64_t ToInteger(Napi::Env env, Napi::Value v, const std::string& name, int64_t min, int64_t max) {
  if (!v.IsNumber()) ThrowArgType(env, name, "of type number", v);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < static_cast<double>(min) ||
      d > static_cast<double>(max))
    ThrowOutOfRange(env, name, RangeText(min, max), v);
  return static_cast<int64_t>(d);
}

int64_t OptInteger(Napi::Env env, Napi::Value v, const std::string& name, int64_t min, int64_t max,
                   int64_t def) {
  if (v.IsUndefined()) return def;
  return ToInteger(env, v, name, min, max);
}

uint64_t ToU64(Napi::Env env, Napi::Value v, const std::string& name) {
  if (!v.IsBigInt()) ThrowArgType(env, name, "of type bigint", v);
  bool lossless = false;
  uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowOutOfRange(env, name, ">= 0n and < 2n ** 64n", v);
  return u;
}

uint64_t ToU64OrNegative(Napi::Env env, Napi::Value v, const std::string& name) {
  if (!v.IsBigInt()) ThrowArgType(env, name, "of type bigint", v);
  bool lossless = false;
  uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (lossless) return u;
  int64_t i = v.As<Napi::BigInt>().Int64Value(&lossless);
  if (lossless) return static_cast<uint64_t>(i);
  ThrowOutOfRange(env, name, ">= -(2n ** 63n) and < 2n ** 64n", v);
}

bool OptBool(Napi::Env env, Napi::Value v, const std::string& name, bool def) {
  if (v.IsUndefined()) return def;
  if (!v.IsBoolean()) ThrowArgType(env, name, "of type boolean", v);
  return v.As<Napi::Boolean>().Value();
}

std::string ToStringArg(Napi::Env env, Napi::Value v, const std::string& name, bool allowEmpty) {
  if (!v.IsString()) ThrowArgType(env, name, "of type string", v);
  std::string s = v.As<Napi::String>().Utf8Value();
  if (!allowEmpty && s.empty()) ThrowArgValue(env, name, "must be a non-empty string", v);
  if (s.find('\0') != std::string::npos) ThrowArgValue(env, name, "must not contain null bytes", v);
  return s;
}

std::vector<uint8_t> ToBytes(Napi::Env env, Napi::Value v, const std::string& name, size_t maxLen) {
  const uint8_t* p = nullptr;
  size_t n = 0;
  if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    Napi::ArrayBuffer ab = ta.ArrayBuffer();
    p = static_cast<const uint8_t*>(ab.Data()) + ta.ByteOffset();
    n = ta.ByteLength();
  } else if (v.IsDataView()) {
    Napi::DataView dv = v.As<Napi::DataView>();
    p = static_cast<const uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    n = dv.ByteLength();
  } else if (v.IsArrayBuffer()) {
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    p = static_cast<const uint8_t*>(ab.Data());
    n = ab.ByteLength();
  } else {
    ThrowArgType(env, name, "an instance of Uint8Array", v);
  }
  if (n > maxLen)
    ThrowOutOfRange(env, name + ".byteLength", "<= " + std::to_string(maxLen),
                    Napi::Number::New(env, static_cast<double>(n)));
  if (n == 0 || p == nullptr) return {};
  return std::vector<uint8_t>(p, p + n);
}

Napi::Object OptObject(Napi::Env env, Napi::Value v, const std::string& name) {
  if (v.IsUndefined() || v.IsNull()) return Napi::Object::New(env);
  // An options bag: a plain object (arrays and functions are objects to V8, not options).
  if (!v.IsObject() || v.IsArray() || v.IsFunction()) ThrowArgType(env, name, "of type object", v);
  return v.As<Napi::Object>();
}

Napi::Value Prop(Napi::Object obj, const char* key) { return obj.Get(key); }

}  // namespace npmu
