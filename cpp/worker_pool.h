// Worker threads kept for the life of the process, shared by every native mover call.
//
// Starting and joining threads on every call is a cost a snapshot of many small sections
// (KV layers) pays per section. `parallel_for` hands its items to threads that already exist.
#pragma once
#include <cstdint>
#include <functional>

namespace thaw {

// Runs fn(item, worker) for every item in [0, num_items) on up to `threads` threads, the
// calling thread being worker 0 and each helper a distinct worker index below `threads`
// (for per-worker buffers). Items are claimed in increasing order. Returns once every item
// has run and no helper still runs fn; the first exception thrown by fn is rethrown then
// (items not yet claimed are skipped). Safe to call from several threads at once, and in a
// child process after fork() (the child starts its own helpers).
void parallel_for(uint64_t num_items, int threads, const std::function<void(uint64_t, int)>& fn);

}  // namespace thaw
