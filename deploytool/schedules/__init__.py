"""Default schedules: register-tiled CPU kernels, weight prefetch, CUDA rules."""
