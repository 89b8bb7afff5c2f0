// Checks thaw::parallel_for (cpp/worker_pool.cpp): every item runs once with a worker index
// below `threads` (none but the caller's below 1), from several calling threads at once; the
// first exception comes back to the caller; a child process after fork() gets helpers of its
// own. Prints "N failed".
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>

#include "worker_pool.h"

namespace {

bool each_item_once(int threads, uint64_t items) {
  std::vector<std::atomic<int>> runs(items);
  std::atomic<int> bad_worker{0};
  thaw::parallel_for(items, threads, [&](uint64_t k, int worker) {
    if (worker < 0 || worker >= threads) ++bad_worker;
    ++runs[k];
  });
  for (auto& r : runs)
    if (r != 1) return false;
  return bad_worker == 0;
}

}  // namespace

int main() {
  int failed = 0;
  for (int threads : {1, 2, 4, 16})
    for (uint64_t items : {1, 3, 100, 10000}) failed += !each_item_once(threads, items);
  for (int threads : {0, -1}) {  // no helpers: every item on the caller, worker 0
    std::atomic<int> items{0}, elsewhere{0};
    thaw::parallel_for(100, threads, [&](uint64_t, int worker) { ++items, elsewhere += worker != 0; });
    failed += items != 100 || elsewhere != 0;
  }
  std::atomic<int> concurrent_failures{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 8; ++c)
    callers.emplace_back([&] {
      for (int r = 0; r < 100; ++r) concurrent_failures += !each_item_once(4, 257);
    });
  for (auto& c : callers) c.join();
  failed += concurrent_failures;
  try {
    thaw::parallel_for(100, 4, [](uint64_t k, int) {
      if (k == 50) throw std::runtime_error("item 50");
    });
    ++failed;
  } catch (const std::runtime_error&) {
  }
  const pid_t child = fork();
  if (child == 0) _exit(each_item_once(8, 5000) ? 0 : 1);
  int status = 0;
  failed += waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  std::printf("worker pool: %d failed\n", failed);
  return failed ? 1 : 0;
}
