"""The image tokenizer: VQGAN encoder/decoder (``nets``), quantizers (``quantizers``: vq, gumbel, regvq), the
``Tokenizer`` model and its ``TokenizerConfig`` (``model``), architecture ``presets``, the PatchGAN
``discriminator`` and the training ``losses``."""
