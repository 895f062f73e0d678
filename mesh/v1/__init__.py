"""Generated wire contract (``make proto`` from ``protos/mesh/v1``); never edited by hand."""
