//! Genesys Cloud regions and their API and login hosts.

use std::fmt;
use std::str::FromStr;

/// A Genesys Cloud region, named by its domain. The API lives at `https://api.{domain}` and OAuth at
/// `https://login.{domain}`.
///
/// ```
/// use tower_redis_cache::genesys::Region;
///
/// let region: Region = "mypurecloud.ie".parse()?;
/// assert_eq!(region, Region::EuWest1);
/// assert_eq!(region.api_base(), "https://api.mypurecloud.ie");
/// assert_eq!(region.login_base(), "https://login.mypurecloud.ie");
/// # Ok::<(), tower_redis_cache::genesys::UnknownRegion>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Region {
    /// US East (Virginia): `mypurecloud.com`.
    UsEast1,
    /// US East 2 (Ohio): `use2.us-gov-pure.cloud` (FedRAMP).
    UsEast2,
    /// US West (Oregon): `usw2.pure.cloud`.
    UsWest2,
    /// Canada (Central): `cac1.pure.cloud`.
    CaCentral1,
    /// South America (Sao Paulo): `sae1.pure.cloud`.
    SaEast1,
    /// Mexico (Central): `mxc1.pure.cloud`.
    MxCentral1,
    /// EU (Ireland): `mypurecloud.ie`.
    EuWest1,
    /// EU (London): `euw2.pure.cloud`.
    EuWest2,
    /// EU (Frankfurt): `mypurecloud.de`.
    EuCentral1,
    /// EU (Zurich): `euc2.pure.cloud`.
    EuCentral2,
    /// Middle East (UAE): `mec1.pure.cloud`.
    MeCentral1,
    /// Asia Pacific (Mumbai): `aps1.pure.cloud`.
    ApSouth1,
    /// Asia Pacific (Tokyo): `mypurecloud.jp`.
    ApNortheast1,
    /// Asia Pacific (Seoul): `apne2.pure.cloud`.
    ApNortheast2,
    /// Asia Pacific (Osaka): `apne3.pure.cloud`.
    ApNortheast3,
    /// Asia Pacific (Sydney): `mypurecloud.com.au`.
    ApSoutheast2,
    /// Asia Pacific (Jakarta): `apse1.pure.cloud`.
    ApSoutheast1,
}

impl Region {
    /// Every region.
    pub const ALL: [Region; 17] = [
        Region::UsEast1,
        Region::UsEast2,
        Region::UsWest2,
        Region::CaCentral1,
        Region::SaEast1,
        Region::MxCentral1,
        Region::EuWest1,
        Region::EuWest2,
        Region::EuCentral1,
        Region::EuCentral2,
        Region::MeCentral1,
        Region::ApSouth1,
        Region::ApNortheast1,
        Region::ApNortheast2,
        Region::ApNortheast3,
        Region::ApSoutheast2,
        Region::ApSoutheast1,
    ];

    /// The region's domain, e.g. `mypurecloud.ie`.
    pub fn domain(self) -> &'static str {
        match self {
            Region::UsEast1 => "mypurecloud.com",
            Region::UsEast2 => "use2.us-gov-pure.cloud",
            Region::UsWest2 => "usw2.pure.cloud",
            Region::CaCentral1 => "cac1.pure.cloud",
            Region::SaEast1 => "sae1.pure.cloud",
            Region::MxCentral1 => "mxc1.pure.cloud",
            Region::EuWest1 => "mypurecloud.ie",
            Region::EuWest2 => "euw2.pure.cloud",
            Region::EuCentral1 => "mypurecloud.de",
            Region::EuCentral2 => "euc2.pure.cloud",
            Region::MeCentral1 => "mec1.pure.cloud",
            Region::ApSouth1 => "aps1.pure.cloud",
            Region::ApNortheast1 => "mypurecloud.jp",
            Region::ApNortheast2 => "apne2.pure.cloud",
            Region::ApNortheast3 => "apne3.pure.cloud",
            Region::ApSoutheast2 => "mypurecloud.com.au",
            Region::ApSoutheast1 => "apse1.pure.cloud",
        }
    }

    /// The API base URL, `https://api.{domain}`.
    pub fn api_base(self) -> String {
        format!("https://api.{}", self.domain())
    }

    /// The OAuth base URL, `https://login.{domain}`.
    pub fn login_base(self) -> String {
        format!("https://login.{}", self.domain())
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.domain())
    }
}

/// A domain that names no Genesys Cloud region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRegion(String);

impl fmt::Display for UnknownRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown Genesys Cloud region {:?} (expected a domain such as mypurecloud.ie)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRegion {}

impl FromStr for Region {
    type Err = UnknownRegion;

    /// Parses a domain (`mypurecloud.ie`), also accepting an `api.` or `login.` host or a URL of one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let host = s
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let host = host
            .strip_prefix("api.")
            .or_else(|| host.strip_prefix("login."))
            .unwrap_or(host);
        Region::ALL
            .into_iter()
            .find(|r| r.domain().eq_ignore_ascii_case(host))
            .ok_or_else(|| UnknownRegion(s.chars().take(100).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_maps_to_its_hosts() {
        // The domain list from DESIGN.md, "Genesys Cloud: what is real".
        let expected = [
            "mypurecloud.com",
            "mypurecloud.ie",
            "mypurecloud.de",
            "mypurecloud.jp",
            "mypurecloud.com.au",
            "usw2.pure.cloud",
            "cac1.pure.cloud",
            "apne2.pure.cloud",
            "euw2.pure.cloud",
            "aps1.pure.cloud",
            "sae1.pure.cloud",
            "mec1.pure.cloud",
            "apne3.pure.cloud",
            "euc2.pure.cloud",
            "mxc1.pure.cloud",
            "apse1.pure.cloud",
            "use2.us-gov-pure.cloud",
        ];
        assert_eq!(expected.len(), Region::ALL.len());
        for domain in expected {
            let region: Region = domain.parse().unwrap();
            assert_eq!(region.domain(), domain);
            assert_eq!(region.api_base(), format!("https://api.{domain}"));
            assert_eq!(region.login_base(), format!("https://login.{domain}"));
            assert_eq!(
                format!("https://api.{domain}/").parse::<Region>(),
                Ok(region)
            );
            assert_eq!(format!("login.{domain}").parse::<Region>(), Ok(region));
        }
        let mut domains: Vec<_> = Region::ALL.iter().map(|r| r.domain()).collect();
        domains.sort_unstable();
        domains.dedup();
        assert_eq!(
            domains.len(),
            Region::ALL.len(),
            "no two regions share a domain"
        );
        assert!("mygen.com".parse::<Region>().is_err());
        assert!("".parse::<Region>().is_err());
    }
}
