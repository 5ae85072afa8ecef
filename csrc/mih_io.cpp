// The MIH file format (versioned, checksummed, written atomically) and its CRC-32.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "mih_internal.h"

namespace imgsim {

// ---------------------------------------------------------------------------------------------------
// CRC-32, slice-by-8.

namespace {
const uint32_t* crc_tables() {
    static uint32_t t[8][256];
    static bool init = [] {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
        return true;
    }();
    (void)init;
    return &t[0][0];
}
}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
    const uint32_t* t = crc_tables();
    const unsigned char* p = static_cast<const unsigned char*>(data);
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = t[7 * 256 + (lo & 0xFF)] ^ t[6 * 256 + ((lo >> 8) & 0xFF)] ^ t[5 * 256 + ((lo >> 16) & 0xFF)] ^
              t[4 * 256 + (lo >> 24)] ^ t[3 * 256 + (hi & 0xFF)] ^ t[2 * 256 + ((hi >> 8) & 0xFF)] ^
              t[1 * 256 + ((hi >> 16) & 0xFF)] ^ t[0 * 256 + (hi >> 24)];
        p += 8;
        n -= 8;
    }
    while (n--) crc = t[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

// ---------------------------------------------------------------------------------------------------
// File format (little-endian), version 1:
//   0  char[8] magic "IMGSMIH\0"     8  u32 version       12 u32 words       16 u32 m (0 = auto)
//   20 u32 reserved (0)              24 u64 count         32 i64 next automatic id
//   40 codes: count * words u64      ... ids: count i64    last 4 bytes: u32 CRC-32 of all before.
// Only live rows are written; tables are rebuilt on the first query after load (O(N), no sort for the
// usual m).

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the index file format is little-endian");
namespace {
constexpr char kMagic[8] = {'I', 'M', 'G', 'S', 'M', 'I', 'H', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeader = 40;

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
    const char* p = static_cast<const char*>(data);
    while (n) {
        ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
        if (w < 0) {
            if (errno == EINTR) continue;
            throw MihIoError(errno, "cannot write " + path + ": " + std::strerror(errno), path);
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
}
}  // namespace

void MihIndex::save(const std::string& path) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    static std::atomic<uint64_t> counter{0};
    std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd < 0) throw MihIoError(errno, "cannot create " + tmp + ": " + std::strerror(errno), tmp);
    try {
        uint64_t count = row_ids_.size() - n_dead_;
        unsigned char hdr[kHeader] = {};
        uint32_t u32[4] = {kVersion, static_cast<uint32_t>(words_), static_cast<uint32_t>(m_fixed_), 0};
        std::memcpy(hdr, kMagic, 8);
        std::memcpy(hdr + 8, u32, 16);
        std::memcpy(hdr + 24, &count, 8);
        std::memcpy(hdr + 32, &next_id_, 8);
        uint32_t crc = crc32_update(0, hdr, kHeader);
        write_all(f.fd, hdr, kHeader, tmp);
        // Live rows only, streamed through a bounded buffer.
        std::vector<uint64_t> buf;
        buf.reserve(1 << 16);
        auto flush = [&] {
            crc = crc32_update(crc, buf.data(), buf.size() * 8);
            write_all(f.fd, buf.data(), buf.size() * 8, tmp);
            buf.clear();
        };
        const size_t rows = row_ids_.size();
        for (size_t r = 0; r < rows; ++r) {
            if ((dead_[r / 64] >> (r % 64)) & 1) continue;
            buf.insert(buf.end(), codes_.begin() + r * words_, codes_.begin() + (r + 1) * words_);
            if (buf.size() + words_ > buf.capacity()) flush();
        }
        flush();
        for (size_t r = 0; r < rows; ++r) {
            if ((dead_[r / 64] >> (r % 64)) & 1) continue;
            buf.push_back(static_cast<uint64_t>(row_ids_[r]));
            if (buf.size() == buf.capacity()) flush();
        }
        flush();
        write_all(f.fd, &crc, 4, tmp);
        if (::fsync(f.fd) != 0) throw MihIoError(errno, "cannot fsync " + tmp + ": " + std::strerror(errno), tmp);
        int fd = f.fd;
        f.fd = -1;
        if (::close(fd) != 0) throw MihIoError(errno, "cannot close " + tmp + ": " + std::strerror(errno), tmp);
        if (::rename(tmp.c_str(), path.c_str()) != 0)
            throw MihIoError(errno, "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno), path);
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    // Make the rename durable: fsync the directory (best effort; some filesystems refuse).
    std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
    if (dir.empty()) dir = "/";
    Fd d;
    d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d.fd >= 0) (void)::fsync(d.fd);
}

std::shared_ptr<MihIndex> MihIndex::load(const std::string& path) {
    Fd f;
    f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) throw MihIoError(errno, "cannot open " + path + ": " + std::strerror(errno), path);
    struct stat st;
    if (::fstat(f.fd, &st) != 0) throw MihIoError(errno, "cannot stat " + path + ": " + std::strerror(errno), path);
    if (!S_ISREG(st.st_mode)) throw MihFormatError(path + " is not a regular file");
    size_t size = static_cast<size_t>(st.st_size);
    if (size < kHeader + 4) throw MihFormatError(path + ": too short for an index file (" + std::to_string(size) + " bytes)");
    std::vector<unsigned char> data(size);
    size_t got = 0;
    while (got < size) {
        ssize_t n = ::read(f.fd, data.data() + got, size - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw MihIoError(errno, "cannot read " + path + ": " + std::strerror(errno), path);
        }
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    if (got != size) throw MihFormatError(path + ": file shrank while reading");
    if (std::memcmp(data.data(), kMagic, 8) != 0) throw MihFormatError(path + ": not an imgsim_fast MIH index (bad magic)");
    uint32_t u32[4];
    uint64_t count;
    int64_t next_id;
    std::memcpy(u32, data.data() + 8, 16);
    std::memcpy(&count, data.data() + 24, 8);
    std::memcpy(&next_id, data.data() + 32, 8);
    if (u32[0] != kVersion)
        throw MihFormatError(path + ": index file version " + std::to_string(u32[0]) + ", this build reads version " +
                             std::to_string(kVersion));
    uint32_t words = u32[1];
    if (words != 1 && words != 2 && words != 4) throw MihFormatError(path + ": corrupt header (words = " + std::to_string(words) + ")");
    uint64_t row_bytes = 8ull * words + 8;
    if (count > (size - kHeader - 4) / row_bytes || kHeader + count * row_bytes + 4 != size)
        throw MihFormatError(path + ": truncated or corrupt (size " + std::to_string(size) + " bytes does not match " +
                             std::to_string(count) + " codes)");
    uint32_t stored;
    std::memcpy(&stored, data.data() + size - 4, 4);
    if (crc32_update(0, data.data(), size - 4) != stored) throw MihFormatError(path + ": checksum mismatch (corrupt file)");
    std::shared_ptr<MihIndex> ix;
    try {
        ix = std::make_shared<MihIndex>(words, u32[2]);
    } catch (const std::invalid_argument& e) {
        throw MihFormatError(path + ": corrupt header (" + e.what() + ")");
    }
    std::vector<uint64_t> codes(count * words);
    std::vector<int64_t> ids(count);
    if (count) {
        std::memcpy(codes.data(), data.data() + kHeader, count * words * 8);
        std::memcpy(ids.data(), data.data() + kHeader + count * words * 8, count * 8);
    }
    std::vector<unsigned char>().swap(data);
    try {
        ix->add(codes.data(), count, ids.data());
    } catch (const std::invalid_argument& e) {
        throw MihFormatError(path + ": corrupt payload (" + e.what() + ")");
    }
    ix->next_id_ = std::max(ix->next_id_, next_id);
    return ix;
}

}  // namespace imgsim

