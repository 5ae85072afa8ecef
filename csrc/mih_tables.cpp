// MIH index state: construction, add/remove with the id map, compaction, and (re)building the substring
// hash tables (Table in mih_internal.h); memory statistics.
#include <cmath>
#include <string>

#include "mih_internal.h"

namespace imgsim {

MihIndex::MihIndex(size_t words, size_t m) : words_(words), m_fixed_(m), idmap_(new IdMap) {
    if (words != 1 && words != 2 && words != 4)
        throw std::invalid_argument("codes must have 64, 128 or 256 bits (1, 2 or 4 words), got " +
                                    std::to_string(words) + " words");
    size_t bits = 64 * words;
    size_t lo = (bits + kMaxSubstringBits - 1) / kMaxSubstringBits;
    if (m != 0 && (m < lo || m > bits))
        throw std::invalid_argument("m must be in [" + std::to_string(lo) + ", " + std::to_string(bits) +
                                    "] for " + std::to_string(bits) + "-bit codes (substrings of at most 32 bits), got " +
                                    std::to_string(m));
    dead_.clear();
}

MihIndex::~MihIndex() = default;

size_t MihIndex::auto_m(size_t bits, size_t n) {
    double lg = std::log2(static_cast<double>(std::max<size_t>(n, 2)));
    size_t m = static_cast<size_t>(std::lround(static_cast<double>(bits) / lg));
    size_t lo = (bits + kMaxSubstringBits - 1) / kMaxSubstringBits;
    size_t hi = bits / 4;  // substrings of at least 4 bits: below that a table is a handful of buckets
    return std::clamp(m, lo, hi);
}

size_t MihIndex::size() const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    return row_ids_.size() - n_dead_;
}

bool MihIndex::contains(int64_t id) const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    return idmap_->find(id) != kEmpty32;
}

std::vector<int64_t> MihIndex::ids() const {
    std::shared_lock<std::shared_mutex> lk(mu_);
    std::vector<int64_t> out;
    out.reserve(row_ids_.size() - n_dead_);
    for (size_t r = 0; r < row_ids_.size(); ++r)
        if (!((dead_[r / 64] >> (r % 64)) & 1)) out.push_back(row_ids_[r]);
    return out;
}

int64_t MihIndex::add(const uint64_t* codes, size_t n, const int64_t* ids) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (n == 0) return ids ? 0 : next_id_;
    size_t rows = row_ids_.size();
    if (rows + n >= kEmpty32 - 1) throw std::invalid_argument("an index holds fewer than 2^32 - 2 rows");
    std::vector<int64_t> new_ids(n);
    if (ids) {
        std::copy(ids, ids + n, new_ids.begin());
        std::vector<int64_t> sorted(new_ids);
        std::sort(sorted.begin(), sorted.end());
        auto dup = std::adjacent_find(sorted.begin(), sorted.end());
        if (dup != sorted.end()) throw std::invalid_argument("duplicate id " + std::to_string(*dup) + " in the batch");
        for (int64_t id : new_ids)
            if (idmap_->find(id) != kEmpty32)
                throw std::invalid_argument("id " + std::to_string(id) + " is already in the index");
    } else {
        if (next_id_ > INT64_MAX - static_cast<int64_t>(n))
            throw std::invalid_argument("automatic ids would overflow int64; pass ids explicitly");
        for (size_t i = 0; i < n; ++i) new_ids[i] = next_id_ + static_cast<int64_t>(i);
    }
    codes_.insert(codes_.end(), codes, codes + n * words_);
    row_ids_.insert(row_ids_.end(), new_ids.begin(), new_ids.end());
    dead_.resize((rows + n + 63) / 64, 0);
    idmap_->reserve(idmap_->used + n);
    for (size_t i = 0; i < n; ++i) {
        idmap_->insert(new_ids[i], static_cast<uint32_t>(rows + i));
        // Automatic ids continue after the largest id ever added (never reused after a remove).
        if (new_ids[i] >= next_id_) next_id_ = new_ids[i] == INT64_MAX ? INT64_MAX : new_ids[i] + 1;
    }
    ++version_;
    return new_ids[0];
}

void MihIndex::remove(const int64_t* ids, size_t n) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    std::vector<uint32_t> rows;
    rows.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        uint32_t r = idmap_->find(ids[i]);
        if (r == kEmpty32) throw MihKeyError("id " + std::to_string(ids[i]) + " is not in the index", ids[i]);
        rows.push_back(r);
    }
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    for (uint32_t r : rows) {
        dead_[r / 64] |= uint64_t{1} << (r % 64);
        idmap_->erase(row_ids_[r]);
        ++n_dead_;
    }
    if (n) ++version_;
}

void MihIndex::set_path(MihPath p) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    path_ = p;
    ++version_;
}

bool MihIndex::needs_rebuild_locked(bool force) const {
    size_t rows = row_ids_.size();
    if (rows == 0) return !tables_.empty();
    if (n_dead_ * 4 > rows) return true;  // compact: removed rows cost scan time and memory
    size_t delta = rows - built_rows_;
    if (force || path_ == MihPath::mih) return delta > 0 || tables_.empty();
    if (tables_.empty()) return true;
    return delta > kDeltaRows + built_rows_ / 32;
}

void MihIndex::ensure_built(bool force) {
    {
        std::shared_lock<std::shared_mutex> lk(mu_);
        if (!needs_rebuild_locked(force)) return;
    }
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (needs_rebuild_locked(force)) rebuild_locked();
}

void MihIndex::compact_locked() {
    size_t rows = row_ids_.size(), w = 0;
    for (size_t r = 0; r < rows; ++r) {
        if ((dead_[r / 64] >> (r % 64)) & 1) continue;
        if (w != r) {
            std::copy(codes_.begin() + r * words_, codes_.begin() + (r + 1) * words_, codes_.begin() + w * words_);
            row_ids_[w] = row_ids_[r];
        }
        ++w;
    }
    codes_.resize(w * words_);
    codes_.shrink_to_fit();
    row_ids_.resize(w);
    row_ids_.shrink_to_fit();
    dead_.assign((w + 63) / 64, 0);
    n_dead_ = 0;
    idmap_->clear();
    idmap_->reserve(w);
    for (size_t r = 0; r < w; ++r) idmap_->insert(row_ids_[r], static_cast<uint32_t>(r));
}

void MihIndex::rebuild_locked() {
    if (n_dead_ > 0) compact_locked();
    size_t rows = row_ids_.size();
    size_t live = rows - n_dead_;
    size_t bits = 64 * words_;
    size_t m = m_fixed_ ? m_fixed_ : auto_m(bits, live);
    tables_.assign(m, Table{});
    // Substrings as equal as possible: the first bits % m get one bit more (paper, section 4).
    uint32_t off = 0;
    for (size_t i = 0; i < m; ++i) {
        uint32_t len = static_cast<uint32_t>(bits / m + (i < bits % m ? 1 : 0));
        tables_[i].set_range(off, len);
        off += len;
    }
    // Probe order: shortest substrings first, so the radius rule gives the extra bit of substring
    // radius to the tables with the fewest keys.
    order_.resize(m);
    for (size_t i = 0; i < m; ++i) order_[i] = static_cast<uint32_t>(i);
    std::stable_sort(order_.begin(), order_.end(),
                     [&](uint32_t a, uint32_t b) { return tables_[a].len < tables_[b].len; });
    parallel_for(m, thread_count(0, m), 1, [&](size_t b, size_t e, size_t) {
        for (size_t i = b; i < e; ++i) tables_[i].build(codes_.data(), words_, rows, dead_, live);
    });
    built_rows_ = rows;
}

MihStats MihIndex::stats() const {
    MihStats st;
    {
        std::lock_guard<std::mutex> lk(stats_mu_);
        st = last_;
    }
    std::shared_lock<std::shared_mutex> lk(mu_);
    st.words = words_;
    st.m_auto = m_fixed_ == 0;
    st.m = tables_.size();
    st.substring_bits.clear();
    for (auto& T : tables_) st.substring_bits.push_back(T.len);
    st.size = row_ids_.size() - n_dead_;
    st.rows = row_ids_.size();
    st.indexed_rows = built_rows_;
    size_t bytes = codes_.capacity() * 8 + row_ids_.capacity() * 8 + dead_.capacity() * 8 + idmap_->bytes();
    for (auto& T : tables_) bytes += T.bytes();
    st.memory_bytes = bytes + sizeof(*this);
    return st;
}

}  // namespace imgsim
