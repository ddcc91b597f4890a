"""Pipeline-parallel inference across several boards over MPI (issue 19): each board runs a contiguous layer
range (a *stage*); activations travel as raw float32 buffers, the sampled token back as one int64."""
