//! The territories that ship as data: every ISO 3166-1 country (249 codes with English names,
//! `data/iso3166-1.tsv`) and the network's four launch regions.

use std::sync::LazyLock;

use crate::TerritoryCode;

/// A country of ISO 3166-1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country {
    /// Alpha-2 code (`DK`).
    pub code: TerritoryCode,
    /// English name (`Denmark`).
    pub name: &'static str,
}

/// A launch region: a code of its own and the countries it serves at first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Region code (`eu`).
    pub code: &'static str,
    /// English name.
    pub name: &'static str,
    /// Member countries, ISO codes.
    pub countries: &'static [&'static str],
}

/// The four launch regions. The United Kingdom is `GB` in ISO 3166-1 (`UK` is only reserved);
/// [`iso_code`] accepts `UK` as a spelling of it.
pub const LAUNCH_REGIONS: &[Region] = &[
    Region {
        code: "eu",
        name: "Europe",
        countries: &["DK", "NO", "SE", "FI", "DE", "GB", "FR"],
    },
    Region {
        code: "am",
        name: "Americas",
        countries: &["US", "CA", "MX", "BR"],
    },
    Region {
        code: "ap",
        name: "Asia-Pacific",
        countries: &["AU", "NZ", "JP", "SG"],
    },
    Region {
        code: "af",
        name: "Africa",
        countries: &["ZA", "KE", "NG", "GH"],
    },
];

static COUNTRIES: LazyLock<Vec<Country>> = LazyLock::new(|| {
    include_str!("../data/iso3166-1.tsv")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (code, name) = line.split_once('\t')?;
            Some(Country {
                code: TerritoryCode::parse(code).ok()?,
                name,
            })
        })
        .collect()
});

/// Every ISO 3166-1 country, by code.
pub fn countries() -> &'static [Country] {
    &COUNTRIES
}

/// The ISO code for a country code as people write it: `UK` is `GB`; anything else as given.
pub fn iso_code(code: &str) -> &str {
    if code == "UK" { "GB" } else { code }
}

/// A country by code (`UK` finds the United Kingdom).
pub fn country(code: &str) -> Option<&'static Country> {
    let code = iso_code(code);
    COUNTRIES.iter().find(|c| c.code.as_str() == code)
}

/// A launch region by code.
pub fn region(code: &str) -> Option<&'static Region> {
    LAUNCH_REGIONS.iter().find(|r| r.code == code)
}

/// The launch region a country belongs to, if any.
pub fn region_of(country: &str) -> Option<&'static Region> {
    let code = iso_code(country);
    LAUNCH_REGIONS.iter().find(|r| r.countries.contains(&code))
}

/// The English name of a territory: a country's, or a launch region's.
pub fn name_of(code: &str) -> Option<&'static str> {
    country(code)
        .map(|c| c.name)
        .or_else(|| region(code).map(|r| r.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_iso_country_is_there_once() {
        assert_eq!(countries().len(), 249);
        let mut codes: Vec<&str> = countries().iter().map(|c| c.code.as_str()).collect();
        codes.dedup();
        assert_eq!(codes.len(), 249, "sorted and unique");
        assert_eq!(name_of("DK"), Some("Denmark"));
        assert_eq!(name_of("UK"), Some("United Kingdom"));
        assert_eq!(name_of("eu"), Some("Europe"));
        assert_eq!(name_of("XX"), None);
    }

    #[test]
    fn launch_regions_hold_known_countries() {
        let mut seen = Vec::new();
        for region in LAUNCH_REGIONS {
            assert!(TerritoryCode::parse(region.code).is_ok());
            for code in region.countries {
                assert!(country(code).is_some(), "{code}");
                assert!(!seen.contains(code), "{code} in two regions");
                seen.push(code);
            }
        }
        assert_eq!(seen.len(), 19);
        assert_eq!(region_of("UK").map(|r| r.code), Some("eu"));
        assert_eq!(region_of("JP").map(|r| r.code), Some("ap"));
        assert_eq!(region_of("IS"), None);
    }
}
