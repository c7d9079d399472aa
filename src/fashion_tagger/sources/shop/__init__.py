"""A shop as a dataset source: its sitemap, its product pages' schema.org JSON-LD, its photos.

`crawl_shop(out, ShopConfig(sitemap=URL))` is the one entry point; see `crawler.py`. What is read
from a page lives in `jsonld.py`, the sitemap format in `sitemap.py`.
"""

from __future__ import annotations

from fashion_tagger.sources.shop.crawler import ShopConfig, ShopResult, crawl_shop, shop_status

__all__ = ["ShopConfig", "ShopResult", "crawl_shop", "shop_status"]
