"""The codec side: input audio read, tokens decoded to audio as they stream, MultiBand Diffusion, melody chroma,
recordings rendered afresh."""
