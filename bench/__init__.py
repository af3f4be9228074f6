"""Benchmarks of the serving stack (``nmtserve bench ...``): the ONNX engine alone, and beside CTranslate2.

Nothing here is imported by the server; torch and CTranslate2 are imported lazily by the modules that need them.
"""
