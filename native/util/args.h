// Argument checks. Every value that crosses from JS is checked here before
// any of it reaches libibverbs, librdmacm or the kernel; a failure throws a
// Node-style TypeError/RangeError naming the argument.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace npmu {

constexpr int64_t kMaxSafeInteger = 9007199254740991;  // 2^53 - 1

// A number that is an integer in [min, max].
int64_t ToInteger(Napi::Env env, Napi::Value v, const std::string& name, int64_t min, int64_t max);
// Same, but `undefined` gives `def`.
int64_t OptInteger(Napi::Env env, Napi::Value v, const std::string& name, int64_t min, int64_t max,
                   int64_t def);
// A bigint in [0, 2^64).
uint64_t ToU64(Napi::Env env, Napi::Value v, const std::string& name);
// A bigint in [-2^63, 2^64): negative values wrap (two's complement), as an
// atomic add of -1n is a decrement.
uint64_t ToU64OrNegative(Napi::Env env, Napi::Value v, const std::string& name);
bool OptBool(Napi::Env env, Napi::Value v, const std::string& name, bool def);
std::string ToStringArg(Napi::Env env, Napi::Value v, const std::string& name, bool allowEmpty = false);
// Uint8Array (incl. Buffer), any other ArrayBufferView, or ArrayBuffer; copied.
std::vector<uint8_t> ToBytes(Napi::Env env, Napi::Value v, const std::string& name, size_t maxLen);
// undefined/null -> empty object; an object -> itself; else TypeError.
Napi::Object OptObject(Napi::Env env, Napi::Value v, const std::string& name);
// obj[key] with getters allowed to throw (the JS exception propagates).
Napi::Value Prop(Napi::Object obj, const char* key);

[[noreturn]] void ThrowInvalidThis(Napi::Env env, const char* typeName);

// Every wrapper class hides ObjectWrap<T>::Unwrap with this check, so a
// method or accessor taken from one class's prototype and called on another
// object (or a plain one) throws ERR_INVALID_THIS instead of reading the
// wrong native type. node-addon-api's callback wrappers call T::Unwrap.
template <typename T>
T* UnwrapThis(Napi::Object o, const napi_type_tag& tag, const char* typeName) {
  if (!o.IsObject() || !o.CheckTypeTag(&tag)) ThrowInvalidThis(o.Env(), typeName);
  return Napi::ObjectWrap<T>::Unwrap(o);
}

[[noreturn]] void ThrowArgTypeExt(Napi::Env env, const std::string& name, const std::string& expected,
                                  Napi::Value received);

// The native object behind a wrapper, recognised by its type tag.
template <typename T>
T* UnwrapTagged(Napi::Env env, Napi::Value v, const napi_type_tag& tag, const std::string& name,
                const char* typeName) {
  if (v.IsObject()) {
    Napi::Object o = v.As<Napi::Object>();
    if (o.CheckTypeTag(&tag)) {
      T* t = T::Unwrap(o);
      if (t) return t;
    }
  }
  ThrowArgTypeExt(env, name, std::string("an instance of ") + typeName, v);
}


}  // namespace npmu
