// Fanout: the lean path for one write to several targets at once.
//
// A Fanout is built once over N legs, each a connected Endpoint and a remote
// window (rkey, base address, length), optionally with a small registered
// "fence" buffer. write() then posts, in ONE call, an RDMA WRITE of the same
// local bytes to every selected leg — and, when asked, an RDMA READ of the
// last bytes written right behind it on each leg (a READ after WRITE on a
// reliable connection completes only once the responder has executed the
// WRITE; or an 8-byte ATOMIC FETCH_AND_ADD of 0 to a "fence word" the leg
// names, which orders the same way and which rxe executes inline where it
// defers a READ to a softirq) — before polling any of them, and settles ONE promise when every
// work request is in: `undefined` if all succeeded, else an array with the
// first error of each leg (undefined for legs that succeeded or were not
// selected). No per-operation JS objects are created on success.
//
// Generic RDMA fan-out (replication, mirroring, erasure-coded fragments all
// post this shape); what the legs mean is the caller's policy.
#pragma once

#include <napi.h>

#include <memory>
#include <vector>

#include "endpoint.h"
#include "mr.h"

namespace npmu {

struct FanoutLeg {
  std::shared_ptr<EndpointRes> ep;
  Napi::ObjectReference epObj;
  uint32_t rkey = 0;
  uint64_t base = 0;    // remote address of the window's first byte
  uint64_t length = 0;  // window length: every access must lie inside it
  std::shared_ptr<MrRes> fence;  // >= 8 bytes, LOCAL_WRITE, on the leg's PD; may be null
  Napi::ObjectReference fenceObj;
  // With a fence word: the fence is an 8-byte ATOMIC FETCH_AND_ADD of 0 there
  // (8-byte aligned, REMOTE_ATOMIC), not a READ of the last bytes written.
  bool atomicFence = false;
  uint64_t fenceAddr = 0;
  uint32_t fenceRkey = 0;
};

class Fanout : public Napi::ObjectWrap<Fanout> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Fanout* Unwrap(Napi::Object o);
  explicit Fanout(const Napi::CallbackInfo& info);
  ~Fanout() override;

 private:
  // write(src, srcOffset, length, remoteOffset, legMask?, fence?)
  Napi::Value Write(const Napi::CallbackInfo& info);
  // writev(src, ops: Float64Array [srcOffset, length, remoteOffset] * k, legMask?, fence?)
  Napi::Value Writev(const Napi::CallbackInfo& info);
  // read(dst: MemoryRegion, dstOffset, length, remoteOffset, leg)
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Legs(const Napi::CallbackInfo& info);
  Napi::Value MaxInline(const Napi::CallbackInfo& info);

  struct Item {
    size_t srcOffset = 0, length = 0;
    uint64_t remoteOffset = 0;
  };
  Napi::Value PostWrites(Napi::Env env, Napi::Value src, const std::vector<Item>& items, Napi::Value maskV,
                         Napi::Value fenceV);

  std::vector<FanoutLeg> legs_;
};

}  // namespace npmu
