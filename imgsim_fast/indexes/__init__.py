"""Indexes over features: Hamming scans and multi-index hashing over packed codes (hamming, mih), cosine k-NN over embeddings (vectors). Not named `index`: that is the job `ims.index`."""
