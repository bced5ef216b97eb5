// An opened RDMA device. The ibv_context is librdmacm's own (rdma_get_devices),
// so a PD allocated on it can carry the QP of an rdma_cm connection.
#pragma once

#include <infiniband/verbs.h>
#include <napi.h>

#include "util/args.h"

#include <memory>
#include <string>

#include "addon_data.h"
#include "util/errors.h"

namespace npmu {

struct ContextRes {
  std::shared_ptr<Registry> reg;
  ibv_context** list = nullptr;  // from rdma_get_devices, freed on close
  ibv_context* ctx = nullptr;
  std::string name;
  int children = 0;  // open PDs
  bool closed = false;

  // nullptr + failure when absent.
  static std::shared_ptr<ContextRes> Open(std::shared_ptr<Registry> reg, const std::string& name,
                                          Failure* failure);
  static std::shared_ptr<ContextRes> ForVerbs(std::shared_ptr<Registry> reg, ibv_context* verbs,
                                              Failure* failure);
  void Close();
  ~ContextRes();
};

class Context : public Napi::ObjectWrap<Context> {
 public:
  static Napi::Function Define(Napi::Env env);
  // A JS object for res.
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<ContextRes> res);

  explicit Context(const Napi::CallbackInfo& info);
  static Context* Unwrap(Napi::Object o) { return UnwrapThis<Context>(o, kContextTag, "Context"); }
  std::shared_ptr<ContextRes> res() const { return res_; }

 private:
  Napi::Value Name(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value QueryDevice(const Napi::CallbackInfo& info);
  Napi::Value QueryPort(const Napi::CallbackInfo& info);
  Napi::Value QueryGid(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  ibv_context* Live(Napi::Env env);

  std::shared_ptr<ContextRes> res_;
};

// listDevices()
Napi::Value ListDevices(const Napi::CallbackInfo& info);
// openContext(name)
Napi::Value OpenContext(const Napi::CallbackInfo& info);

// The construction token check shared by all wrappers that JS must not build
// directly: info[0] must be the External the addon passes itself.
void* TakeToken(const Napi::CallbackInfo& info, const char* className);
Napi::External<void> MakeToken(Napi::Env env, void* payload);

}  // namespace npmu
