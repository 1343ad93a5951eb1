// sqz/io/detail/posix_file.hpp - the POSIX plumbing of sqz's file I/O: read-only memory maps, anonymous
// temporary files and atomic publication of a finished file.
//
// Output files appear atomically: data goes into an unnamed temporary file in the destination's
// directory (O_TMPFILE where the file system has it, otherwise a named file that is unlinked on failure),
// which is flushed to disk and then renamed over the destination. A crash or an exception leaves the
// destination as it was.
#pragma once

#include <sqz/error.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace sqz::io::detail {

/// Formats errno as "strerror (errno N)".
inline std::string errno_text(int code) { return std::string(std::strerror(code)) + " (errno " + std::to_string(code) + ")"; }

/// Owns a file descriptor.
class unique_fd {
public:
    unique_fd() = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& other) noexcept {
        if (this != &other) {
            reset();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    void reset() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
};

/// A whole file mapped read-only. Pages are read on first touch and can be dropped again with
/// release(), so a program that walks a large file tensor by tensor keeps only the current one resident.
class mapped_file {
public:
    explicit mapped_file(const std::filesystem::path& path) {
        unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) sqz::detail::fail("cannot open: ", errno_text(errno));
        struct stat info {};
        if (::fstat(fd.get(), &info) != 0) sqz::detail::fail("cannot stat: ", errno_text(errno));
        if (!S_ISREG(info.st_mode)) sqz::detail::fail("not a regular file");
        size_ = static_cast<std::size_t>(info.st_size);
        if (size_ == 0) return;  // mmap rejects empty mappings; an empty file is simply zero bytes
        void* address = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
        if (address == MAP_FAILED) sqz::detail::fail("cannot map ", size_, " bytes: ", errno_text(errno));
        data_ = static_cast<const std::uint8_t*>(address);
    }
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    ~mapped_file() {
        if (data_ != nullptr) ::munmap(const_cast<std::uint8_t*>(data_), size_);
    }

    std::span<const std::uint8_t> bytes() const noexcept { return {data_, size_}; }

    /// Drops the resident pages that overlap [offset, offset + length) (they are read again from the file
    /// if touched later). Only a memory hint: it never changes what the mapping reads.
    void release(std::size_t offset, std::size_t length) const noexcept {
        if (data_ == nullptr || length == 0 || offset >= size_) return;
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t first = offset / page * page;
        const std::size_t last = std::min(size_, offset + length);
        ::madvise(const_cast<std::uint8_t*>(data_) + first, last - first, MADV_DONTNEED);
    }

private:
    const std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

/// Writes all of `bytes` at the current position, retrying short writes and EINTR.
inline void write_all(int fd, std::span<const std::uint8_t> bytes, const std::string& what) {
    while (!bytes.empty()) {
        const ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            sqz::detail::fail("cannot write ", what, ": ", errno_text(errno));
        }
        bytes = bytes.subspan(static_cast<std::size_t>(n));
    }
}

/// Copies `length` bytes from `in` at `offset` to the current position of `out`, inside the kernel where
/// it can (copy_file_range), otherwise through a buffer.
inline void copy_range(int in, std::uint64_t offset, int out, std::uint64_t length, const std::string& what) {
    auto in_offset = static_cast<off_t>(offset);
    bool kernel_copy = true;
    while (length > 0 && kernel_copy) {
        const ssize_t n = ::copy_file_range(in, &in_offset, out, nullptr, static_cast<std::size_t>(length), 0);
        if (n > 0) {
            length -= static_cast<std::uint64_t>(n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
            kernel_copy = false;  // not supported here: fall back to read/write
        } else {
            sqz::detail::fail("cannot copy ", what, ": ", n < 0 ? errno_text(errno) : std::string("unexpected end of data"));
        }
    }
    std::vector<std::uint8_t> buffer(std::min<std::uint64_t>(length, std::uint64_t{1} << 20));
    while (length > 0) {
        const ssize_t n = ::pread(in, buffer.data(), std::min<std::uint64_t>(length, buffer.size()), in_offset);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) sqz::detail::fail("cannot copy ", what, ": ", n < 0 ? errno_text(errno) : std::string("unexpected end of data"));
        write_all(out, std::span<const std::uint8_t>(buffer.data(), static_cast<std::size_t>(n)), what);
        in_offset += n;
        length -= static_cast<std::uint64_t>(n);
    }
}

inline std::filesystem::path directory_of(const std::filesystem::path& file) {
    const auto parent = file.parent_path();
    return parent.empty() ? std::filesystem::path(".") : parent;
}

/// A unique hidden name next to `destination` for a temporary file.
inline std::filesystem::path temporary_name(const std::filesystem::path& destination) {
    static std::atomic<unsigned> counter{0};
    const std::string name = "." + destination.filename().string() + ".sqz-tmp-" + std::to_string(::getpid()) + "-" +
                             std::to_string(counter.fetch_add(1));
    return directory_of(destination) / name;
}

/// An unnamed read-write file in `directory` that vanishes when closed: used as a spool for data that
/// is copied elsewhere later.
inline unique_fd anonymous_file(const std::filesystem::path& directory) {
#ifdef O_TMPFILE
    unique_fd fd(::open(directory.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (fd) return fd;
#endif
    // No O_TMPFILE on this file system: create a named file and unlink it at once.
    std::string pattern = (directory / ".sqz-spool-XXXXXX").string();
    unique_fd named(::mkostemp(pattern.data(), O_CLOEXEC));
    if (!named) sqz::detail::fail("cannot create a temporary file in '", directory.string(), "': ", errno_text(errno));
    ::unlink(pattern.c_str());
    return named;
}

/// A file being written that becomes visible under its destination name only through publish(). Until
/// then it is unnamed (O_TMPFILE) or hidden under a temporary name that the destructor removes.
class pending_file {
public:
    explicit pending_file(std::filesystem::path destination) : destination_(std::move(destination)) {
        const auto directory = directory_of(destination_);
#ifdef O_TMPFILE
        fd_ = unique_fd(::open(directory.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0666));
        if (fd_) return;
#endif
        temporary_ = temporary_name(destination_);
        fd_ = unique_fd(::open(temporary_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0644));
        if (!fd_) sqz::detail::fail("cannot create a temporary file in '", directory.string(), "': ", errno_text(errno));
    }
    pending_file(const pending_file&) = delete;
    pending_file& operator=(const pending_file&) = delete;
    ~pending_file() {
        if (!temporary_.empty()) ::unlink(temporary_.c_str());
    }

    int fd() const noexcept { return fd_.get(); }

    /// Flushes the data to disk and atomically replaces the destination with it.
    void publish() {
        if (::fsync(fd_.get()) != 0) sqz::detail::fail("cannot flush '", destination_.string(), "': ", errno_text(errno));
        if (temporary_.empty()) {
            // Give the unnamed file a hidden name first: rename() is what replaces atomically.
            temporary_ = temporary_name(destination_);
            const std::string self = "/proc/self/fd/" + std::to_string(fd_.get());
            if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, temporary_.c_str(), AT_SYMLINK_FOLLOW) != 0) {
                // No /proc here: copy the unnamed file into a named one instead.
                unique_fd named(::open(temporary_.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644));
                if (!named) {
                    const int code = errno;
                    temporary_.clear();
                    sqz::detail::fail("cannot create a temporary file for '", destination_.string(), "': ",
                                      errno_text(code));
                }
                struct stat info {};
                if (::fstat(fd_.get(), &info) != 0)
                    sqz::detail::fail("cannot stat the temporary file for '", destination_.string(), "': ",
                                      errno_text(errno));
                copy_range(fd_.get(), 0, named.get(), static_cast<std::uint64_t>(info.st_size), "'" + destination_.string() + "'");
                if (::fsync(named.get()) != 0)
                    sqz::detail::fail("cannot flush '", destination_.string(), "': ", errno_text(errno));
            }
        }
        if (::rename(temporary_.c_str(), destination_.c_str()) != 0)
            sqz::detail::fail("cannot rename the temporary file to '", destination_.string(), "': ", errno_text(errno));
        temporary_.clear();
        // Make the rename itself durable; failure here loses nothing already visible.
        unique_fd directory(::open(directory_of(destination_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (directory) ::fsync(directory.get());
        fd_.reset();
    }

private:
    std::filesystem::path destination_;
    std::filesystem::path temporary_;  // non-empty while a named temporary file exists
    unique_fd fd_;
};

}  // namespace sqz::io::detail
