// Error construction for the addon.
//
// System and verbs failures become instances of the JS class handed to init()
// (better-sqlite3 pattern): new VerbsError(message, code, errno, syscall).
// Argument errors are Node-style TypeError/RangeError with a `code` property.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace npmu {

// A failure described without touching JS, so native code that runs without
// an environment (teardown, C callbacks) can record it and report it later.
struct Failure {
  std::string code;     // errno name, ibv_wc_status name or ERR_NPMU_*
  int errnum = 0;       // C errno (positive); 0 = none
  std::string syscall;  // verb or syscall name; empty = none
  std::string message;
  // REJECTED: the peer's reject private data (error.privateData)
  std::shared_ptr<std::vector<uint8_t>> privateData;

  bool empty() const { return code.empty(); }
  static Failure Errno(int err, const char* syscall, const std::string& what = "");
  static Failure Npmu(const char* code, const std::string& message, int err = 0,
                      const char* syscall = nullptr);
};

const char* ErrnoName(int err);          // "ENOMEM", … ("EUNKNOWN" if unknown)
const char* WcStatusName(int status);    // "IBV_WC_REM_ACCESS_ERR", …

// new VerbsError(...) (or a plain Error carrying the same fields before init()).
Napi::Error MakeError(Napi::Env env, const Failure& f);
[[noreturn]] void Throw(Napi::Env env, const Failure& f);
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall,
                             const std::string& what = "");
[[noreturn]] void ThrowNpmu(Napi::Env env, const char* code, const std::string& message);

// Node-style argument errors.
[[noreturn]] void ThrowArgType(Napi::Env env, const std::string& name,
                               const std::string& expected, Napi::Value received);
[[noreturn]] void ThrowArgValue(Napi::Env env, const std::string& name,
                                const std::string& reason, Napi::Value received);
[[noreturn]] void ThrowOutOfRange(Napi::Env env, const std::string& name,
                                  const std::string& range, Napi::Value received);

// "type string ('abc')", "undefined", "an instance of Array", …
std::string DescribeValue(Napi::Value v);

}  // namespace npmu
