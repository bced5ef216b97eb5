// libuv handles owned by native resources.
//
// A UvHandle keeps its owner (a shared_ptr) alive until libuv has called its
// close callback, so a callback can never run on freed memory, and its memory
// is freed only in that close callback. Open handles are counted in the
// Registry so environment teardown can wait for the last close.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>

#include "addon_data.h"

namespace npmu {

class UvHandle {
 public:
  // A uv_poll on fd (UV_READABLE); cb(status, events).
  static UvHandle* Poll(std::shared_ptr<Registry> reg, std::shared_ptr<void> owner, int fd,
                        std::function<void(int, int)> cb);
  // A one-shot uv_timer; cb(0, 0).
  static UvHandle* Timer(std::shared_ptr<Registry> reg, std::shared_ptr<void> owner,
                         uint64_t timeoutMs, std::function<void(int, int)> cb);

  void Ref(bool on);
  // Idempotent. The owner reference is dropped in the close callback.
  void Close();
  bool closing() const { return closing_; }

 private:
  UvHandle(std::shared_ptr<Registry> reg, std::shared_ptr<void> owner, std::function<void(int, int)> cb);
  static void OnPoll(uv_poll_t* h, int status, int events);
  static void OnTimer(uv_timer_t* h);
  static void OnClose(uv_handle_t* h);

  union {
    uv_handle_t handle_;
    uv_poll_t poll_;
    uv_timer_t timer_;
  };
  std::shared_ptr<Registry> reg_;
  std::shared_ptr<void> owner_;
  std::function<void(int, int)> cb_;
  bool closing_ = false;
};

}  // namespace npmu
