"""Fused map, faiss index, PnP and the query loop. No Lightning imports here."""
