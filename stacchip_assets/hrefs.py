"""Old path of the href policy (:mod:`stacchip_assets.core.hrefs` for the string checks and credentials,
:mod:`stacchip_assets.io.local_files` for `HrefPolicy`, which opens local files), kept for one release."""

from stacchip_assets.core.hrefs import (  # noqa: F401
    CREDENTIAL_PARAMS,
    CREDENTIAL_PREFIXES,
    SAS_PARAMS,
    gdal_syntax_problem,
    has_credentials,
    host_allowed,
    is_url,
    raster_driver_of,
    redact_credentials,
    strip_credentials,
    url_problem,
)
from stacchip_assets.io.local_files import HrefPolicy, default_read_policy  # noqa: F401
