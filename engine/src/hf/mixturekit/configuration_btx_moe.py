"""Configuration of a Mixture-of-Experts written by the btx engine in MixtureKit's layout:
the base model's configuration (__BASE_CONFIG_CLASS__) under its own model type."""
import transformers


class BtxMoeConfig(getattr(transformers, "__BASE_CONFIG_CLASS__")):
    model_type = "btx_moe"
