// Work requests: parsing from JS, the per-WR record that rides in wr_id, and
// the batch (one promise) a set of records settles.
#pragma once

#include <infiniband/verbs.h>
#include <napi.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "mr.h"
#include "util/errors.h"

namespace npmu {

class EndpointRes;

enum class Op { Write, Read, Send, Recv, Cas, Faa };

// A validated work request, not yet posted.
struct WrSpec {
  Op op = Op::Write;
  std::shared_ptr<MrRes> mr;
  Napi::Object mrObj;  // the MR's JS object, held while in flight
  size_t offset = 0, length = 0;
  uint64_t remoteAddr = 0;
  uint32_t rkey = 0;
  uint64_t compare = 0, swap = 0;  // cas: compare/swap; faa: compare = add
};

// Parses {op, mr, offset, length, remoteAddr?, rkey?, compare?, swap?, add?}.
WrSpec ParseWorkRequest(Napi::Env env, Napi::Value v, const std::string& name);
// Validates a local slice + remote part given positionally.
void CheckSlice(Napi::Env env, WrSpec& s, Napi::Value mr, Napi::Value offset, Napi::Value length,
                const std::string& prefix);
void CheckRemote(Napi::Env env, WrSpec& s, Napi::Value remoteAddr, Napi::Value rkey, const std::string& prefix);

struct Result {
  bool done = false;
  bool ok = false;
  bool hasByteLength = false;
  bool hasValue = false;
  uint32_t byteLength = 0;
  uint64_t value = 0;
  Failure failure;
};

// One promise over one or more work requests.
struct Batch {
  // Legs (Fanout): results are `groups` runs of `perGroup`; settles with
  // undefined when every posted one succeeded, else an array of `groups`
  // entries, the first error of each group (undefined where none).
  enum class Kind { Void, Number, Value, Results, Legs };
  Kind kind = Kind::Results;
  Napi::Promise::Deferred deferred;
  std::vector<Result> results;
  size_t remaining = 0;
  size_t groups = 0, perGroup = 0;  // Kind::Legs
  bool settled = false;

  Batch(Napi::Env env, Kind k, size_t n);
  // Records result i; settles the promise when the last one is in (JS allowed).
  void Complete(Napi::Env env, size_t i, Result r);
  void Settle(Napi::Env env);
};

// wr_id of every posted work request points at one of these.
struct WrRecord {
  EndpointRes* ep = nullptr;
  Op op = Op::Write;
  std::shared_ptr<MrRes> mr;  // null for an inline WRITE from unregistered memory (Fanout)
  Napi::ObjectReference mrObj;  // may be empty: another record of the same post holds the MR object
  uint8_t* local = nullptr;  // atomics: the 8-byte result slot
  std::shared_ptr<Batch> batch;
  size_t slot = 0;
  std::shared_ptr<size_t> groupPending;  // busy-poll: records of this post still out
  // Built at post time; handed to the QP when a send/recv credit is free.
  bool isRecv = false;
  bool posted = false;  // on the QP (holds a queue slot and a CQ entry)
  ibv_sge sge{};
  ibv_send_wr swr{};
  ibv_recv_wr rwr{};
  // An inline WRITE's bytes, copied at post time (the caller's memory may
  // change before a queued record reaches the QP).
  // The most any endpoint sends inline from a Fanout's unregistered source
  // (NpmuClient asks for 256: one log record of a commit fits).
  static constexpr size_t kInline = 256;
  std::array<uint8_t, kInline> inl;
};

const char* OpName(Op op);

}  // namespace npmu
