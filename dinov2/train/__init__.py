from .ssl_meta_arch import NonFiniteLossError, SSLMetaArch

__all__ = ["NonFiniteLossError", "SSLMetaArch"]
