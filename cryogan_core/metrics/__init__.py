"""Quality measures: FSC (2D and 3D), correlation and PSNR of images."""
