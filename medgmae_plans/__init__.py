"""Planning side of the MedGMAE toolkit, and the small runtime pieces every command shares.

Kept free of heavy imports: `paths`, `atomic` and `runtime` are imported by every CLI before
nnU-Net is (nnU-Net reads its folder variables at import time).
"""
from .threads import use_sleeping_waiters

use_sleeping_waiters()  # before any command imports torch: see `threads`
