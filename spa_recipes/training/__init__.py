"""Training stages on Accelerate: DPO/SPA (:mod:`.preference`) and SFT (:mod:`.sft`), sharing :mod:`.loop`."""
