#include "mapping.h"

#include <fcntl.h>
#include <libpmem.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

#include "context.h"
#include "util/args.h"

namespace npmu {

namespace {

constexpr size_t kDefaultDaxAlign = 2 * 1024 * 1024;
constexpr uint32_t kMaxExtents = 1 << 20;

const char* KindName(MapKind k) {
  switch (k) {
    case MapKind::Devdax:
      return "devdax";
    case MapKind::Tmpfs:
      return "tmpfs";
    default:
      return "file";
  }
}

bool ReadSysfsU64(const std::string& path, uint64_t* out) {
  FILE* f = fopen(path.c_str(), "re");
  if (!f) return false;
  unsigned long long v = 0;
  int n = fscanf(f, "%llu", &v);
  fclose(f);
  if (n != 1) return false;
  *out = v;
  return true;
}

// An opened file or devdax device, with what mapping it needs.
struct Target {
  int fd = -1;
  MapKind kind = MapKind::File;
  size_t pageSize = 0;
  uint64_t deviceSize = 0;
  ~Target() {
    if (fd >= 0) close(fd);
  }
};

// devdax: /sys/dev/char/MAJ:MIN is the dax device; its `size` is the device
// size and `align` (or its region's) the mapping alignment.
bool ProbeDevdax(dev_t rdev, Target* t, Failure* f) {
  char base[64];
  snprintf(base, sizeof base, "/sys/dev/char/%u:%u", major(rdev), minor(rdev));
  std::string b(base);
  char link[PATH_MAX];
  ssize_t n = readlink((b + "/subsystem").c_str(), link, sizeof link - 1);
  if (n <= 0) {
    *f = Failure::Npmu("EINVAL", "character device is not a devdax device", EINVAL, "open");
    return false;
  }
  link[n] = 0;
  const char* slash = strrchr(link, '/');
  if (strcmp(slash ? slash + 1 : link, "dax") != 0) {
    *f = Failure::Npmu("EINVAL", "character device is not a devdax device", EINVAL, "open");
    return false;
  }
  uint64_t size = 0;
  if (!ReadSysfsU64(b + "/size", &size) || size == 0) {
    *f = Failure::Npmu("EINVAL", "cannot read devdax size from " + b + "/size", EINVAL, "open");
    return false;
  }
  uint64_t align = 0;
  const char* candidates[] = {"/align", "/device/align", "/dax_region/align", "/device/dax_region/align",
                              "/../dax_region/align"};
  for (const char* c : candidates) {
    if (ReadSysfsU64(b + c, &align) && align >= 4096 && (align & (align - 1)) == 0) break;
    align = 0;
  }
  t->kind = MapKind::Devdax;
  t->deviceSize = size;
  t->pageSize = align ? static_cast<size_t>(align) : kDefaultDaxAlign;
  return true;
}

bool OpenTarget(const std::string& path, bool readOnly, bool create, int64_t minSize, Target* t,
                Failure* f) {
  int flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  t->fd = open(path.c_str(), flags | (create ? O_CREAT : 0), 0600);
  if (t->fd < 0) {
    *f = Failure::Errno(errno, "open", path);
    return false;
  }
  struct stat st;
  if (fstat(t->fd, &st) != 0) {
    *f = Failure::Errno(errno, "fstat", path);
    return false;
  }
  if (S_ISCHR(st.st_mode)) return ProbeDevdax(st.st_rdev, t, f);
  if (!S_ISREG(st.st_mode)) {
    *f = Failure::Npmu("EINVAL", path + " is neither a regular file nor a devdax device", EINVAL, "open");
    return false;
  }
  if (minSize >= 0 && st.st_size < minSize) {
    if (ftruncate(t->fd, minSize) != 0) {
      *f = Failure::Errno(errno, "ftruncate", path);
      return false;
    }
    st.st_size = minSize;
  }
  struct statfs sfs;
  if (fstatfs(t->fd, &sfs) != 0) {
    *f = Failure::Errno(errno, "fstatfs", path);
    return false;
  }
  t->kind = static_cast<unsigned long>(sfs.f_type) == TMPFS_MAGIC ? MapKind::Tmpfs : MapKind::File;
  t->pageSize = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  t->deviceSize = static_cast<uint64_t>(st.st_size);
  return true;
}

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Read-only mappings of files are MAP_PRIVATE and writable: buffer() hands JS
// a writable ArrayBuffer, and a JS store into a PROT_READ page would kill the
// process. Stray stores stay in private pages; the file is never written.
// devdax cannot be mapped private: it stays PROT_READ and buffer() is refused.
int Prot(const Target& t, bool readOnly) {
  return (readOnly && t.kind == MapKind::Devdax) ? PROT_READ : PROT_READ | PROT_WRITE;
}
int Flags(const Target& t, bool readOnly) {
  return (readOnly && t.kind != MapKind::Devdax) ? MAP_PRIVATE : MAP_SHARED;
}

Napi::Object WrapMapping(Napi::Env env, std::shared_ptr<MappingRes> res) {
  auto* holder = new std::shared_ptr<MappingRes>(std::move(res));
  try {
    Napi::Object o = GetData(env)->mappingCtor.New({MakeToken(env, holder)});
    delete holder;
    return o;
  } catch (...) {
    delete holder;
    throw;
  }
}

std::shared_ptr<MappingRes> NewRes(Napi::Env env, const std::string& path, const Target& t, bool readOnly) {
  auto res = std::make_shared<MappingRes>();
  res->reg = GetData(env)->reg;
  res->path = path;
  res->kind = t.kind;
  res->pageSize = t.pageSize;
  res->deviceSize = t.deviceSize;
  res->readOnly = readOnly;
  res->privateMap = Flags(t, readOnly) == MAP_PRIVATE;
  return res;
}

[[noreturn]] void ThrowNotAligned(Napi::Env env, const std::string& what, uint64_t value, size_t pageSize) {
  Throw(env, Failure::Npmu("ERR_NPMU_NOT_ALIGNED",
                           what + " (" + std::to_string(value) + ") is not a multiple of the page size " +
                               std::to_string(pageSize)));
}

}  // namespace

// ---- MappingRes -----------------------------------------------------------

void MappingRes::Close() {
  if (!closed) {
    closed = true;
    reg->mappings.erase(this);
  }
  for (BufHint* h : hints)
    if (!h->released) return;  // a view may be alive elsewhere: unmap when it is collected
  Unmap();
}

void MappingRes::Unmap() {
  if (addr) munmap(addr, mapLength);
  addr = nullptr;
}

MappingRes::~MappingRes() {
  if (!closed) reg->mappings.erase(this);
  closed = true;
  Unmap();
}

// ---- module functions -------------------------------------------------------

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ToStringArg(env, info[0], "path");
  Napi::Object opts = OptObject(env, info[1], "opts");
  int64_t offset = OptInteger(env, Prop(opts, "offset"), "opts.offset", 0, kMaxSafeInteger, 0);
  Napi::Value lengthV = Prop(opts, "length");
  int64_t length = OptInteger(env, lengthV, "opts.length", 1, kMaxSafeInteger, -1);
  bool create = OptBool(env, Prop(opts, "create"), "opts.create", false);
  int64_t size = OptInteger(env, Prop(opts, "size"), "opts.size", 0, kMaxSafeInteger, -1);
  bool readOnly = OptBool(env, Prop(opts, "readOnly"), "opts.readOnly", false);

  Target t;
  Failure f;
  if (!OpenTarget(path, readOnly, create, size, &t, &f)) Throw(env, f);
  if (static_cast<uint64_t>(offset) % t.pageSize) ThrowNotAligned(env, "opts.offset", offset, t.pageSize);
  if (static_cast<uint64_t>(offset) >= t.deviceSize)
    ThrowOutOfRange(env, "opts.offset", "< the file/device size " + std::to_string(t.deviceSize),
                    Prop(opts, "offset"));
  if (length < 0) {
    length = static_cast<int64_t>(t.deviceSize - offset);
  } else {
    if (static_cast<uint64_t>(length) % t.pageSize) ThrowNotAligned(env, "opts.length", length, t.pageSize);
    if (static_cast<uint64_t>(offset + length) > t.deviceSize)
      ThrowOutOfRange(env, "opts.length",
                      "<= " + std::to_string(t.deviceSize - offset) + " (the size past opts.offset)", lengthV);
  }
  size_t mapLength = RoundUp(static_cast<size_t>(length), t.pageSize);
  void* p = mmap(nullptr, mapLength, Prot(t, readOnly), Flags(t, readOnly), t.fd, offset);
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap", path);

  auto res = NewRes(env, path, t, readOnly);
  res->addr = static_cast<uint8_t*>(p);
  res->length = static_cast<size_t>(length);
  res->mapLength = mapLength;
  res->reg->mappings.insert(res.get());
  return WrapMapping(env, res);
}

Napi::Value MapExtents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ToStringArg(env, info[0], "path");
  if (!info[1].IsArray()) ThrowArgType(env, "extents", "an instance of Array", info[1]);
  Napi::Array arr = info[1].As<Napi::Array>();
  Napi::Object opts = OptObject(env, info[2], "opts");
  bool readOnly = OptBool(env, Prop(opts, "readOnly"), "opts.readOnly", false);
  uint32_t n = arr.Length();
  if (n == 0 || n > kMaxExtents)
    ThrowOutOfRange(env, "extents.length", ">= 1 and <= " + std::to_string(kMaxExtents),
                    Napi::Number::New(env, n));
  struct Ext {
    uint64_t offset, length;
  };
  std::vector<Ext> exts(n);
  std::vector<Napi::Value> lengthValues(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string name = "extents[" + std::to_string(i) + "]";
    Napi::Value ev = arr.Get(i);
    if (!ev.IsObject()) ThrowArgType(env, name, "of type object", ev);
    Napi::Object eo = ev.As<Napi::Object>();
    exts[i].offset = ToInteger(env, Prop(eo, "offset"), name + ".offset", 0, kMaxSafeInteger);
    lengthValues[i] = Prop(eo, "length");
    exts[i].length = ToInteger(env, lengthValues[i], name + ".length", 1, kMaxSafeInteger);
  }

  Target t;
  Failure f;
  if (!OpenTarget(path, readOnly, false, -1, &t, &f)) Throw(env, f);
  uint64_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    std::string name = "extents[" + std::to_string(i) + "]";
    if (exts[i].offset % t.pageSize) ThrowNotAligned(env, name + ".offset", exts[i].offset, t.pageSize);
    if (exts[i].length % t.pageSize) ThrowNotAligned(env, name + ".length", exts[i].length, t.pageSize);
    if (exts[i].offset + exts[i].length > t.deviceSize)
      ThrowOutOfRange(env, name + ".length",
                      "<= " + std::to_string(t.deviceSize > exts[i].offset ? t.deviceSize - exts[i].offset : 0) +
                          " (extent past the end of " + path + ")",
                      lengthValues[i]);
    total += exts[i].length;
    if (total > static_cast<uint64_t>(kMaxSafeInteger))
      ThrowOutOfRange(env, "extents", "a total length <= 2^53 - 1", info[1]);
  }

  // Reserve an aligned PROT_NONE range (over-reserve, then trim both ends),
  // then map each extent into it with MAP_FIXED, in order.
  size_t align = t.pageSize;
  size_t sysPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t reserve = static_cast<size_t>(total) + (align > sysPage ? align : 0);
  void* r = mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) ThrowErrno(env, errno, "mmap", "reserving " + std::to_string(reserve) + " bytes");
  uintptr_t raw = reinterpret_cast<uintptr_t>(r);
  uintptr_t base = (raw + align - 1) / align * align;
  if (base > raw) munmap(r, base - raw);
  uintptr_t end = base + static_cast<size_t>(total);
  if (raw + reserve > end) munmap(reinterpret_cast<void*>(end), raw + reserve - end);

  uintptr_t cursor = base;
  for (uint32_t i = 0; i < n; i++) {
    void* p = mmap(reinterpret_cast<void*>(cursor), static_cast<size_t>(exts[i].length), Prot(t, readOnly),
                   Flags(t, readOnly) | MAP_FIXED, t.fd, static_cast<off_t>(exts[i].offset));
    if (p == MAP_FAILED) {
      int err = errno;
      munmap(reinterpret_cast<void*>(base), static_cast<size_t>(total));
      ThrowErrno(env, err, "mmap", "extent " + std::to_string(i));
    }
    cursor += static_cast<size_t>(exts[i].length);
  }

  auto res = NewRes(env, path, t, readOnly);
  res->addr = reinterpret_cast<uint8_t*>(base);
  res->length = static_cast<size_t>(total);
  res->mapLength = static_cast<size_t>(total);
  res->reg->mappings.insert(res.get());
  return WrapMapping(env, res);
}

// ---- Mapping ----------------------------------------------------------------

Napi::Function Mapping::Define(Napi::Env env) {
  return DefineClass(env, "Mapping",
                     {
                         InstanceAccessor<&Mapping::Path>("path"),
                         InstanceAccessor<&Mapping::Kind>("kind"),
                         InstanceAccessor<&Mapping::PageSize>("pageSize"),
                         InstanceAccessor<&Mapping::DeviceSize>("deviceSize"),
                         InstanceAccessor<&Mapping::Length>("length"),
                         InstanceAccessor<&Mapping::ReadOnly>("readOnly"),
                         InstanceAccessor<&Mapping::Closed>("closed"),
                         InstanceMethod<&Mapping::Buffer>("buffer"),
                         InstanceMethod<&Mapping::Persist>("persist"),
                         InstanceMethod<&Mapping::Close>("close"),
                     });
}

Mapping::Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
  res_ = *static_cast<std::shared_ptr<MappingRes>*>(TakeToken(info, "Mapping"));
  info.This().As<Napi::Object>().TypeTag(&kMappingTag);
}

Napi::Value Mapping::Path(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), res_->path); }
Napi::Value Mapping::Kind(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), KindName(res_->kind));
}
Napi::Value Mapping::PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(res_->pageSize));
}
Napi::Value Mapping::DeviceSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(res_->deviceSize));
}
Napi::Value Mapping::Length(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(res_->length));
}
Napi::Value Mapping::ReadOnly(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), res_->readOnly);
}
Napi::Value Mapping::Closed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), res_->closed);
}

Napi::Value Mapping::Buffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (res_->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "mapping is closed");
  if (res_->readOnly && !res_->privateMap)
    Throw(env, Failure::Npmu("EACCES",
                             "a read-only devdax mapping has no buffer(): a store through it would fault",
                             EACCES, "mmap"));
  // Forget collected buffers; hand out the live one if there is one.
  std::vector<std::pair<Napi::Reference<Napi::ArrayBuffer>, BufHint*>> live;
  Napi::ArrayBuffer current;
  for (auto& entry : buffers_) {
    Napi::ArrayBuffer ab = entry.first.Value();
    if (ab.IsEmpty()) continue;
    if (!ab.IsDetached()) current = ab;
    live.push_back(std::move(entry));
  }
  buffers_ = std::move(live);
  if (!current.IsEmpty()) return current;

  // The ArrayBuffer keeps the native mapping record alive (its finalizer
  // drops the reference); close() detaches it before munmap. It is marked
  // untransferable (init()'s hook): its memory must not move to another owner.
  auto* hint = new BufHint{res_, false};
  Napi::ArrayBuffer ab;
  try {
    ab = Napi::ArrayBuffer::New(
        env, res_->addr, res_->length,
        [](Napi::Env, void*, BufHint* h) {
          h->res->hints.erase(h);
          std::shared_ptr<MappingRes> res = std::move(h->res);
          delete h;
          if (res->closed) res->Close();  // the last outside view gone: unmap now
        },
        hint);
  } catch (...) {
    delete hint;
    throw;
  }
  res_->hints.insert(hint);
  buffers_.emplace_back(Napi::Weak(ab), hint);
  MarkUntransferable(env, ab);
  return ab;
}

Napi::Value Mapping::Persist(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t len = static_cast<int64_t>(res_->length);
  int64_t offset = ToInteger(env, info[0], "offset", 0, len);
  int64_t length = ToInteger(env, info[1], "length", 0, len - offset);
  if (res_->closed) ThrowNpmu(env, "ERR_NPMU_CLOSED", "mapping is closed");
  if (res_->kind == MapKind::Devdax) {
    if (length > 0) pmem_persist(res_->addr + offset, static_cast<size_t>(length));
    return Napi::String::New(env, "pmem");
  }
  if (length > 0) {
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    uintptr_t start = reinterpret_cast<uintptr_t>(res_->addr) + static_cast<size_t>(offset);
    uintptr_t end = start + static_cast<size_t>(length);
    start = start / page * page;
    end = (end + page - 1) / page * page;
    if (msync(reinterpret_cast<void*>(start), end - start, MS_SYNC) != 0) ThrowErrno(env, errno, "msync");
  }
  return Napi::String::New(env, "msync");
}

Napi::Value Mapping::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (res_->closed) return env.Undefined();
  if (res_->children > 0)
    ThrowNpmu(env, "ERR_NPMU_BUSY",
              "mapping has " + std::to_string(res_->children) + " open memory region(s)");
  // Detach every view handed out, so none outlives the mapping. A buffer that
  // was detached by someone else (transferred) may live on under a new owner:
  // MappingRes::Close then leaves the memory mapped until that one is collected.
  for (auto& entry : buffers_) {
    if (!res_->hints.count(entry.second)) continue;  // already freed
    Napi::ArrayBuffer ab = entry.first.Value();
    if (!ab.IsEmpty() && !ab.IsDetached()) {
      ab.Detach();
      entry.second->released = true;
    }
  }
  buffers_.clear();
  res_->Close();
  return env.Undefined();
}

}  // namespace npmu
