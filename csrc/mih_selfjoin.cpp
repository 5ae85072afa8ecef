// The resumable all-pairs self-join cursor (MihSelfJoin).
#include "mih_internal.h"

namespace imgsim {

MihSelfJoin::MihSelfJoin(std::shared_ptr<MihIndex> index, uint32_t r, int threads)
    : index_(std::move(index)), r_(r), threads_(threads) {
    index_->ensure_built(false);
    std::shared_lock<std::shared_mutex> lk(index_->mu_);
    version_ = index_->version_;
}

bool MihSelfJoin::next(size_t max_pairs, SelfJoinChunk& out) {
    max_pairs = std::max<size_t>(max_pairs, 1);
    out.a.clear();
    out.b.clear();
    out.dist.clear();
    MihIndex& ix = *index_;
    std::shared_lock<std::shared_mutex> lk(ix.mu_);
    if (ix.version_ != version_) throw MihConcurrentModification("the index changed during self_join; start a new one");
    const size_t rows = ix.row_ids_.size();
    MihIndex::Counters total;
    while (out.a.size() < max_pairs) {
        if (pending_pos_ < pending_.a.size()) {
            size_t take = std::min(max_pairs - out.a.size(), pending_.a.size() - pending_pos_);
            out.a.insert(out.a.end(), pending_.a.begin() + pending_pos_, pending_.a.begin() + pending_pos_ + take);
            out.b.insert(out.b.end(), pending_.b.begin() + pending_pos_, pending_.b.begin() + pending_pos_ + take);
            out.dist.insert(out.dist.end(), pending_.dist.begin() + pending_pos_,
                            pending_.dist.begin() + pending_pos_ + take);
            pending_pos_ += take;
            continue;
        }
        if (row_ >= rows) break;
        // Next block of query rows, in parallel; each row asks only for later rows.
        size_t b0 = row_, b1 = std::min(rows, row_ + block_);
        const size_t nt = thread_count(threads_, b1 - b0);
        std::vector<MihIndex::Scratch> scratch(nt);
        std::vector<MihIndex::Counters> counters(nt);
        std::vector<std::vector<std::pair<int32_t, int64_t>>> per(b1 - b0);
        std::vector<std::vector<size_t>> deferred(nt);
        parallel_for(b1 - b0, nt, 4, [&](size_t b, size_t e, size_t tid) {
            for (size_t i = b; i < e; ++i) {
                size_t row = b0 + i;
                if ((ix.dead_[row / 64] >> (row % 64)) & 1) continue;
                if (ix.radius_one(ix.codes_.data() + row * ix.words_, r_, row + 1, b1 - b0, scratch[tid], counters[tid], per[i]))
                    deferred[tid].push_back(i);
            }
        });
        {
            // Rows that chose the scan, each against the rows after it, scanned as one batch.
            std::vector<size_t> qi = merge_deferred(deferred);
            std::vector<const uint64_t*> qs(qi.size());
            std::vector<size_t> begins(qi.size());
            std::vector<std::vector<std::pair<int32_t, int64_t>>*> outs(qi.size());
            for (size_t j = 0; j < qi.size(); ++j) {
                qs[j] = ix.codes_.data() + (b0 + qi[j]) * ix.words_;
                begins[j] = b0 + qi[j] + 1;
                outs[j] = &per[qi[j]];
            }
            ix.radius_scan_deferred(qs.data(), begins.data(), outs.data(), qi.size(), r_, nt, scratch);
        }
        parallel_for(b1 - b0, nt, 64, [&](size_t b, size_t e, size_t) {
            for (size_t i = b; i < e; ++i) std::sort(per[i].begin(), per[i].end());
        });
        for (auto& c : counters) total.add(c);
        pending_.a.clear();
        pending_.b.clear();
        pending_.dist.clear();
        pending_pos_ = 0;
        for (size_t i = 0; i < per.size(); ++i) {
            int64_t id = ix.row_ids_[b0 + i];
            for (auto& pr : per[i]) {
                pending_.a.push_back(std::min(id, pr.second));
                pending_.b.push_back(std::max(id, pr.second));
                pending_.dist.push_back(pr.first);
            }
        }
        // Keep a block's pairs near a few chunks: dense data (many duplicates) shrinks the block.
        size_t got = pending_.a.size();
        if (got > 4 * max_pairs)
            block_ = std::max<size_t>(1, block_ / 2);
        else if (got < max_pairs && block_ < 16384)
            block_ *= 2;
        row_ = b1;
    }
    ix.record("self_join", total);
    return !out.a.empty();
}

}  // namespace imgsim
