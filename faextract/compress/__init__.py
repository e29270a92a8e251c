"""Error-bounded compression of climate cubes (the foundation-model codec of Li, Lee,
Rangarajan & Ranka, arXiv 2412.17184), built in slices:

- :mod:`~faextract.compress.entropy`: integer symbols <-> bytes with constriction's ANS coder,
  the model carried as integer counts, so a stream decodes bit-identically on any machine;
- :mod:`~faextract.compress.guarantee`: the pointwise error bound enforced on the float32
  result whatever the predictor reconstructs (quantized residual, exact exceptions);
- :mod:`~faextract.compress.patches`: the patch-wise guarantee (RMSE of every 8x8 patch <= E,
  hence NRMSE), a PCA basis over the residual patches with the shortest prefix of quantized
  coefficients, checked on the float32 result;
- :mod:`~faextract.compress.mask`: missing values (NaN masks that change in time), lossless;
- :mod:`~faextract.compress.blocks`: a variable cut into blocks of steps x 256 x 256 cells
  (64 steps in a store, 8 in the network's training crops; or the whole grid), each normalized, filled, padded for the network and restored after;
  constant and all-missing blocks told apart (stored as a value);
- :mod:`~faextract.compress.codec`: one block to a sealed byte stream and back (mask, prediction,
  correction, entropy coding); the prediction is the network's reconstruction from its coded
  latents (``LearnedPredictor``: float64 decoder side, a digest of the reconstruction checked)
  the closed-loop interpolation (:mod:`~faextract.compress.interpolation`) or the block's mean
  (a plain error-bounded quantizer), whichever codes the block shorter;
- :mod:`~faextract.compress.latent`: the network's latents coded with scales snapped to a
  fixed table (a decoder whose scales snap elsewhere stops with an error) and the
  hyper-latent with integer tables made once from the model's prior;
- :mod:`~faextract.compress.container`: the compressed Zarr store (the input's coordinates and
  attributes as xarray writes them, one uint8 array per block stream, the model's sha256),
  ``compress`` (restartable, sharded across a job array), ``decompress`` (a time range or a
  region decodes only its blocks) and the lazy ``open_compressed``;
- :mod:`~faextract.compress.model`: the network (2-D/3-D VAE encoder, mean-scale hyperprior
  with a factorized prior, 3-D/2-D decoder with a ConvNeXt + pixel-shuffle super-resolution
  module) and its rate-distortion loss;
- :mod:`~faextract.compress.training`: what ``faextract train`` (``job: compressor``) feeds the
  network: block crops prepared as the container prepares blocks, and the validation.

``benchmarks/bench_compress.py`` measures it against SZ3, ZFP, SPERR and BitRound + zstd.
"""
