"""Evaluation: image metrics, FID/KID/precision-recall, codebook health, and the `regvq eval` results.

    metrics   PSNR, SSIM, L1 per image; code histograms, usage, perplexity, dead codes
    fid       feature statistics, FID, KID, precision/recall, cached reference statistics
    codebook  codebook report and usage-histogram PNG
    recon     evaluate_recon(tokenizer, images, ...)   (regvq eval recon)
    gen       evaluate_gen(samples, ref, ...)          (regvq eval gen)
    result    the result schema, protocol block, validate_result
    batches   8-bit conversions and batching of image files

Nothing is imported here, so importing the package stays cheap.
"""
