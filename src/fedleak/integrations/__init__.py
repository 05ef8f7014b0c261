"""Bridges to engines users already run: Flower (``flower``: an audit strategy for real FL runs) and
Ray (``ray``: a backend that spreads a study's runs over a cluster). Each needs its optional extra
(``pip install 'fedleak[flower]'`` / ``'fedleak[ray]'``) and is imported only when used."""
