"""Backend adapters.  Each module defines BACKEND, registered in fastrnn.dispatch.

Adapter signature (arrays already validated, contiguous and of one dtype):
    forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training)
        -> (y, h_n, c_n, payload)       c0/c_n are None unless lstm; lengths is
                                         None or a host int64 (B,) array
    backward(payload, dy, dh_n, dc_n)
        -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)
"""
