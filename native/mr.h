// A registered memory region over a JS buffer (pinned: a reference is held
// until deregistration) or over a Mapping (kept mapped natively).
#pragma once

#include <infiniband/verbs.h>
#include <napi.h>

#include "util/args.h"

#include <memory>

#include "mapping.h"
#include "pd.h"

namespace npmu {

struct MrRes {
  std::shared_ptr<Registry> reg;
  std::shared_ptr<PdRes> pd;
  std::shared_ptr<MappingRes> mapping;  // when registered over a Mapping
  ibv_mr* mr = nullptr;
  uint8_t* addr = nullptr;
  size_t length = 0;
  uint64_t iova = 0;
  int access = 0;
  uint32_t lkey = 0, rkey = 0;
  int inflight = 0;  // posted work requests using it as local buffer
  bool closed = false;

  void Close();
  ~MrRes();
};

class MemoryRegion : public Napi::ObjectWrap<MemoryRegion> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit MemoryRegion(const Napi::CallbackInfo& info);
  static MemoryRegion* Unwrap(Napi::Object o) { return UnwrapThis<MemoryRegion>(o, kMrTag, "MemoryRegion"); }
  ~MemoryRegion() override;
  std::shared_ptr<MrRes> res() const { return res_; }
  // The registered JS memory was detached (moved away) after registration.
  bool Detached() const;

 private:
  Napi::Value Lkey(const Napi::CallbackInfo& info);
  Napi::Value Rkey(const Napi::CallbackInfo& info);
  Napi::Value Iova(const Napi::CallbackInfo& info);
  Napi::Value Length(const Napi::CallbackInfo& info);
  Napi::Value Access(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<MrRes> res_;
  Napi::ObjectReference pin_;  // the JS buffer, while registered
  Napi::Reference<Napi::ArrayBuffer> ab_;  // its ArrayBuffer (strong while registered)
};

}  // namespace npmu
