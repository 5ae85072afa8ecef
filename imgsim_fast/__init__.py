"""imgsim_fast: find duplicate, near-duplicate and similar images.

Perceptual hashes compared by SIMD Hamming scans, deep embeddings in an HNSW index, and metadata filters.
"""
__version__ = "0.1.0"
