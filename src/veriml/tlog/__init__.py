"""veriml.tlog"""
