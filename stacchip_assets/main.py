"""`python -m stacchip_assets.main`: the sample catalog run (see stacchip_assets.demo.main)."""

from stacchip_assets.demo.main import main

if __name__ == "__main__":
    main()
