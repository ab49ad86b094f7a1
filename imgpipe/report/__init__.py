"""`imgpipe report`: a static page of what the pipeline made of a prefix, for a browser.

`collect` reads the records and makes the thumbnails; `page` writes the files. The page is
offline (no CDN, no server): `index.html`, `report.css`, `report.js`, the data in
`data.js` (one script, so a page opened from disk may read it) and `thumbs/*.jpg`.
"""

from imgpipe.report.collect import ReportData, build_report, make_thumbnail

__all__ = ["ReportData", "build_report", "make_thumbnail"]
