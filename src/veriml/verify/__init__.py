"""veriml.verify"""
