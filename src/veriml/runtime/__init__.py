"""veriml.runtime"""
