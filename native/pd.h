// A protection domain. MRs and endpoints made on it hold it (shared_ptr), so
// its ibv_pd outlives them whatever order JS drops things in.
#pragma once

#include <infiniband/verbs.h>
#include <napi.h>

#include "util/args.h"

#include <memory>

#include "context.h"

namespace npmu {

struct PdRes {
  std::shared_ptr<Registry> reg;
  std::shared_ptr<ContextRes> ctx;
  ibv_pd* pd = nullptr;
  int children = 0;        // open MRs and endpoints
  bool closed = false;
  bool autoClose = false;  // owned by an endpoint that is gone: close with the last child
  bool ownsCtx = false;    // ctx was opened for this PD alone (endpoint-owned PDs)

  static std::shared_ptr<PdRes> Alloc(std::shared_ptr<ContextRes> ctx, Failure* failure);
  void AddChild() { children++; }
  void RemoveChild();
  void Close();
  ~PdRes();
};

class ProtectionDomain : public Napi::ObjectWrap<ProtectionDomain> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<PdRes> res);

  explicit ProtectionDomain(const Napi::CallbackInfo& info);
  static ProtectionDomain* Unwrap(Napi::Object o) { return UnwrapThis<ProtectionDomain>(o, kPdTag, "ProtectionDomain"); }
  std::shared_ptr<PdRes> res() const { return res_; }

 private:
  Napi::Value GetContext(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<PdRes> res_;
  Napi::ObjectReference context_;
};

}  // namespace npmu
