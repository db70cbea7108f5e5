// Runs a command inside a fresh memory cgroup with a hard limit (cgroup v1 or v2, whichever holds the
// memory controller here), and reports how it ended and the cgroup's peak usage. Used by the tests that
// prove `--mem` is a ceiling (test_mem_ceiling.cpp).
//
// Where the cgroup goes: v1, under this process's own memory cgroup (so any limit above still applies),
// else the hierarchy's root; v2, next to this process's cgroup (a cgroup holding processes cannot also
// have children with controllers), else under the root, wherever the parent already delegates `memory`
// (the helper never changes a parent's subtree_control). No swap: v1 also limits memory+swap where the
// kernel accounts it; v2 sets memory.swap.max to 0. MemoryCgroup::create returns null with the reason
// when this is not possible (not root, no writable memory controller), for the caller to skip.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace moe::test {

struct CgroupRun {
  int status = -1;          // exit code, or -1 when a signal ended the command
  int signal = 0;           // the signal that ended it (SIGKILL: the OOM killer, most likely)
  bool oom_killed = false;  // the cgroup's oom_kill counter moved
  uint64_t limit = 0;       // the limit the kernel applied (v1 rounds to pages)
  uint64_t peak = 0;        // the cgroup's peak usage, page cache included; 0 when the kernel does not say
  std::string out, err;
};

class MemoryCgroup {
 public:
  // A new cgroup named `name` limited to `limit` bytes, or null with *why_not saying why it cannot be made.
  static std::unique_ptr<MemoryCgroup> create(const std::string& name, uint64_t limit, std::string* why_not) {
    std::string reasons;
    for (const Parent& p : candidate_parents()) {
      const std::string dir = p.dir + "/" + name;
      if (::mkdir(dir.c_str(), 0755) != 0) {
        reasons += "; " + dir + ": " + std::strerror(errno);
        continue;
      }
      auto cg = std::unique_ptr<MemoryCgroup>(new MemoryCgroup(dir, p.v2));
      std::string err;
      if (cg->configure(limit, &err)) return cg;
      reasons += "; " + dir + ": " + err;  // the destructor removes the directory
    }
    *why_not = (::geteuid() == 0 ? std::string("no writable memory cgroup controller")
                                 : std::string("not root, and no writable memory cgroup controller")) +
               (reasons.empty() ? std::string(" (none mounted)") : reasons);
    return nullptr;
  }

  ~MemoryCgroup() {
    // The command has exited; the kernel may need a moment to release the cgroup.
    for (int i = 0; i < 100 && ::rmdir(dir_.c_str()) != 0 && errno == EBUSY; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  const std::string& dir() const { return dir_; }
  const char* version() const { return v2_ ? "v2" : "v1"; }

  // Runs argv[0] (a path) with argv inside the cgroup, stdin from `stdin_text`, stdout and stderr to
  // files under `scratch`. Files in `cold` lose their page cache first, so that the command's reads of
  // them are charged to the cgroup as they would be in a fresh container.
  CgroupRun run(const std::vector<std::string>& argv, const std::string& scratch, const std::string& stdin_text = "",
                const std::vector<std::string>& cold = {}) {
    for (const std::string& f : cold) drop_page_cache(f);
    const std::string in = scratch + ".in", out = scratch + ".out", err = scratch + ".err";
    { std::ofstream(in, std::ios::binary) << stdin_text; }
    const std::string procs = dir_ + "/cgroup.procs";
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const uint64_t ooms_before = oom_kills();
    CgroupRun r;
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Child: only async-signal-safe calls until exec.
      const int fi = ::open(in.c_str(), O_RDONLY), fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644),
                fe = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fi < 0 || fo < 0 || fe < 0) ::_exit(126);
      ::dup2(fi, 0), ::dup2(fo, 1), ::dup2(fe, 2);
      char digits[24];
      int n = 0;
      for (long v = ::getpid(); v > 0; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
      char pid_text[24];
      for (int i = 0; i < n; ++i) pid_text[i] = digits[n - 1 - i];
      const int fp = ::open(procs.c_str(), O_WRONLY);
      if (fp < 0 || ::write(fp, pid_text, static_cast<size_t>(n)) != n) {
        const char msg[] = "memory_cgroup: cannot join the cgroup\n";
        (void)!::write(2, msg, sizeof msg - 1);
        ::_exit(125);
      }
      ::close(fp);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    int ws = 0;
    if (pid > 0) {
      while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
      }
      if (WIFEXITED(ws)) r.status = WEXITSTATUS(ws);
      if (WIFSIGNALED(ws)) r.signal = WTERMSIG(ws);
    }
    r.out = slurp_file(out);
    r.err = slurp_file(err);
    r.limit = read_u64(v2_ ? "memory.max" : "memory.limit_in_bytes");
    r.peak = read_u64(v2_ ? "memory.peak" : "memory.max_usage_in_bytes");
    r.oom_killed = oom_kills() > ooms_before;
    return r;
  }

 private:
  struct Parent {
    std::string dir;
    bool v2;
  };

  MemoryCgroup(std::string dir, bool v2) : dir_(std::move(dir)), v2_(v2) {}

  bool configure(uint64_t limit, std::string* err) {
    const std::string value = std::to_string(limit);
    const char* limit_file = v2_ ? "memory.max" : "memory.limit_in_bytes";
    if (!write_file(limit_file, value)) {
      *err = std::string("cannot set ") + limit_file;
      return false;
    }
    if (v2_) {
      (void)write_file("memory.swap.max", "0");
      return true;
    }
    // Where swap is accounted, memory+swap gets the same limit (must follow the memory limit).
    if (::access((dir_ + "/memory.memsw.limit_in_bytes").c_str(), F_OK) == 0)
      (void)write_file("memory.memsw.limit_in_bytes", value);
    return true;
  }

  // v1 first: where the memory controller is bound to a v1 hierarchy, v2 cannot have it.
  static std::vector<Parent> candidate_parents() {
    std::vector<Parent> out;
    std::string v1_mount, v2_mount;
    std::ifstream mi("/proc/self/mountinfo");
    for (std::string line; std::getline(mi, line);) {
      // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
      std::istringstream ls(line);
      std::vector<std::string> f;
      for (std::string w; ls >> w;) f.push_back(w);
      size_t dash = 0;
      while (dash < f.size() && f[dash] != "-") ++dash;
      if (f.size() < 5 || dash + 3 >= f.size()) continue;
      const std::string& type = f[dash + 1];
      const std::string super = "," + f[dash + 3] + ",";
      if (type == "cgroup" && super.find(",memory,") != std::string::npos) v1_mount = f[4];
      if (type == "cgroup2" && v2_mount.empty()) v2_mount = f[4];
    }
    std::string v1_path, v2_path;
    std::ifstream pc("/proc/self/cgroup");
    for (std::string line; std::getline(pc, line);) {
      const size_t a = line.find(':'), b = line.find(':', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      const std::string controllers = "," + line.substr(a + 1, b - a - 1) + ",";
      if (controllers.find(",memory,") != std::string::npos) v1_path = line.substr(b + 1);
      if (line.compare(0, 3, "0::") == 0) v2_path = line.substr(b + 1);
    }
    if (!v1_mount.empty()) {
      if (!v1_path.empty() && v1_path != "/") out.push_back({v1_mount + v1_path, false});
      out.push_back({v1_mount, false});
      return out;
    }
    if (!v2_mount.empty()) {
      auto delegates_memory = [](const std::string& dir) {
        std::ifstream f(dir + "/cgroup.subtree_control");
        std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        return (" " + s + " ").find(" memory") != std::string::npos;
      };
      if (!v2_path.empty() && v2_path != "/") {
        const std::string parent = v2_mount + v2_path.substr(0, v2_path.rfind('/'));
        if (delegates_memory(parent)) out.push_back({parent, true});
      }
      if (delegates_memory(v2_mount)) out.push_back({v2_mount, true});
    }
    return out;
  }

  bool write_file(const std::string& name, const std::string& value) const {
    const int fd = ::open((dir_ + "/" + name).c_str(), O_WRONLY);
    if (fd < 0) return false;
    const bool ok = ::write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
    ::close(fd);
    return ok;
  }

  uint64_t read_u64(const std::string& name) const {
    std::ifstream f(dir_ + "/" + name);
    std::string s;
    if (!(f >> s) || s == "max") return 0;
    return std::stoull(s);
  }

  // v1: "oom_kill N" in memory.oom_control; v2: "oom_kill N" in memory.events.
  uint64_t oom_kills() const {
    std::ifstream f(dir_ + (v2_ ? "/memory.events" : "/memory.oom_control"));
    std::string key;
    uint64_t value = 0;
    while (f >> key >> value)
      if (key == "oom_kill") return value;
    return 0;
  }

  static void drop_page_cache(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    (void)::fdatasync(fd);
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }

  static std::string slurp_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::string dir_;
  bool v2_ = false;
};

}  // namespace moe::test
