#include "worker_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

namespace thaw {
namespace {

struct Job {
  uint64_t num_items;
  const std::function<void(uint64_t, int)>* fn;
  int helpers_wanted;
  int helpers_joined = 0;   // guarded by the pool's lock
  int helpers_running = 0;  // guarded by the pool's lock
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_lock;
  std::exception_ptr error;

  void work(int worker) {
    try {
      for (uint64_t k; !failed.load(std::memory_order_relaxed) && (k = next++) < num_items;) (*fn)(k, worker);
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock);
      if (!error) error = std::current_exception();
      failed = true;
    }
  }
};

// One per process, never destroyed (helpers may still wait on it at exit). After fork()
// the child has none of the parent's helpers: its pool is made anew, empty.
class Pool {
 public:
  static Pool& get() {
    static bool registered = (pthread_atfork(&Pool::before_fork, &Pool::after_fork_parent,
                                             &Pool::after_fork_child), true);
    (void)registered;
    return *instance;
  }

  void run(uint64_t num_items, int threads, const std::function<void(uint64_t, int)>& fn) {
    Job job;
    job.num_items = num_items;
    job.fn = &fn;
    const uint64_t wanted = std::min<uint64_t>(static_cast<uint64_t>(std::max(threads, 1)), num_items);
    job.helpers_wanted = static_cast<int>(wanted) - 1;
    if (job.helpers_wanted > 0) {
      std::lock_guard<std::mutex> guard(lock_);
      while (helpers_ < job.helpers_wanted) {
        std::thread(&Pool::helper_loop, this).detach();
        ++helpers_;
      }
      jobs_.push_back(&job);
      work_ready_.notify_all();
    }
    job.work(0);
    if (job.helpers_wanted > 0) {
      std::unique_lock<std::mutex> guard(lock_);
      jobs_.erase(std::find(jobs_.begin(), jobs_.end(), &job));  // no helper joins it from here on
      job_done_.wait(guard, [&] { return job.helpers_running == 0; });
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  void helper_loop() {
    std::unique_lock<std::mutex> guard(lock_);
    for (;;) {
      Job* job = nullptr;
      work_ready_.wait(guard, [&] {
        auto open = std::find_if(jobs_.begin(), jobs_.end(),
                                 [](Job* j) { return j->helpers_joined < j->helpers_wanted; });
        job = open == jobs_.end() ? nullptr : *open;
        return job != nullptr;
      });
      const int worker = ++job->helpers_joined;
      ++job->helpers_running;
      guard.unlock();
      job->work(worker);
      guard.lock();
      if (--job->helpers_running == 0) job_done_.notify_all();
    }
  }

  static void before_fork() { instance->lock_.lock(); }
  static void after_fork_parent() { instance->lock_.unlock(); }
  static void after_fork_child() { instance = new Pool(); }  // the old one (locked, helperless) is left

  static Pool* instance;
  std::mutex lock_;
  std::condition_variable work_ready_, job_done_;
  std::deque<Job*> jobs_;
  int helpers_ = 0;
};

Pool* Pool::instance = new Pool();

}  // namespace

void parallel_for(uint64_t num_items, int threads, const std::function<void(uint64_t, int)>& fn) {
  if (num_items == 0) return;
  Pool::get().run(num_items, threads, fn);
}

}  // namespace thaw
