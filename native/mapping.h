// MAP_SHARED mappings of a devdax device, a tmpfs file or an ordinary file,
// plain or stitched from extents into one contiguous virtual range.
#pragma once

#include <napi.h>

#include "util/args.h"

#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "addon_data.h"
#include "util/errors.h"

namespace npmu {

enum class MapKind { Devdax, Tmpfs, File };

struct MappingRes {
  std::shared_ptr<Registry> reg;
  std::string path;
  MapKind kind = MapKind::File;
  size_t pageSize = 0;
  uint64_t deviceSize = 0;
  uint8_t* addr = nullptr;
  size_t length = 0;     // bytes visible (buffer(), MRs)
  size_t mapLength = 0;  // bytes to munmap (length rounded up to pages)
  bool readOnly = false;
  bool privateMap = false;  // read-only file mappings are MAP_PRIVATE (see mapping.cc)
  bool closed = false;
  int children = 0;  // open MRs
  // buffer() ArrayBuffers whose backing store V8 has not freed yet; the ones
  // close() detached itself are `released`.
  std::unordered_set<struct BufHint*> hints;

  // Marks the mapping closed and unmaps it, unless a buffer() backing store
  // may still be alive elsewhere (moved out by a transfer): then the memory
  // stays mapped until the last such buffer is collected (no live view over
  // unmapped memory, ever).
  void Close();
  void Unmap();
  ~MappingRes();
};

// The finalizer hint of a buffer() ArrayBuffer: keeps the mapping record alive.
struct BufHint {
  std::shared_ptr<MappingRes> res;
  bool released = false;  // detached by close()
};

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Mapping(const Napi::CallbackInfo& info);
  static Mapping* Unwrap(Napi::Object o) { return UnwrapThis<Mapping>(o, kMappingTag, "Mapping"); }
  std::shared_ptr<MappingRes> res() const { return res_; }

 private:
  Napi::Value Path(const Napi::CallbackInfo& info);
  Napi::Value Kind(const Napi::CallbackInfo& info);
  Napi::Value PageSize(const Napi::CallbackInfo& info);
  Napi::Value DeviceSize(const Napi::CallbackInfo& info);
  Napi::Value Length(const Napi::CallbackInfo& info);
  Napi::Value ReadOnly(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value Buffer(const Napi::CallbackInfo& info);
  Napi::Value Persist(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<MappingRes> res_;
  std::vector<std::pair<Napi::Reference<Napi::ArrayBuffer>, BufHint*>> buffers_;  // weak
};

Napi::Value MapFile(const Napi::CallbackInfo& info);
Napi::Value MapExtents(const Napi::CallbackInfo& info);

}  // namespace npmu
