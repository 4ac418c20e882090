"""The CPU inference fast path: MKL weight packs (weight_packs), the GGUF-block decode kernel (gguf_blocks, with its
C++ source in csrc/), and the one-off timings that choose between code paths on this machine (timing)."""
