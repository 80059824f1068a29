//! ggml tensor types: ids, block geometry and names, as in ggml's `ggml.h` and python `gguf`'s
//! `GGML_QUANT_SIZES`.

use std::fmt;

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $block:literal, $bytes:expr; )*) => {
        /// A ggml tensor element type.
        ///
        /// Every type listed by the GGUF specification is known, so a file's tensor directory can
        /// always be read; only some of them can be dequantized (see [`GgmlType::can_dequantize`]).
        #[allow(non_camel_case_types, missing_docs)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $( $variant, )*
        }

        impl GgmlType {
            /// The type for a ggml type id, if known.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $( $id => Some(Self::$variant), )*
                    _ => None,
                }
            }

            /// The ggml type id.
            pub fn id(self) -> u32 {
                match self {
                    $( Self::$variant => $id, )*
                }
            }

            /// Elements per block (1 for plain types).
            pub fn block_size(self) -> usize {
                match self {
                    $( Self::$variant => $block, )*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self {
                    $( Self::$variant => $bytes, )*
                }
            }

            /// The name ggml and python `gguf` use (`Q4_K`, `BF16`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => stringify!($variant), )*
                }
            }
        }
    };
}

const QK_K: usize = 256;

ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 2 + 16;
    Q4_1 = 3, 32, 2 + 2 + 16;
    Q5_0 = 6, 32, 2 + 4 + 16;
    Q5_1 = 7, 32, 2 + 2 + 4 + 16;
    Q8_0 = 8, 32, 2 + 32;
    Q8_1 = 9, 32, 4 + 4 + 32;
    Q2_K = 10, 256, 2 + 2 + QK_K / 16 + QK_K / 4;
    Q3_K = 11, 256, 2 + QK_K / 4 + QK_K / 8 + 12;
    Q4_K = 12, 256, 2 + 2 + QK_K / 2 + 12;
    Q5_K = 13, 256, 2 + 2 + QK_K / 2 + QK_K / 8 + 12;
    Q6_K = 14, 256, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16;
    Q8_K = 15, 256, 4 + QK_K + QK_K / 8;
    IQ2_XXS = 16, 256, 2 + QK_K / 4;
    IQ2_XS = 17, 256, 2 + QK_K / 4 + QK_K / 32;
    IQ3_XXS = 18, 256, 2 + QK_K / 4 + QK_K / 8;
    IQ1_S = 19, 256, 2 + QK_K / 8 + QK_K / 16;
    IQ4_NL = 20, 32, 2 + 16;
    IQ3_S = 21, 256, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    IQ2_S = 22, 256, 2 + QK_K / 4 + QK_K / 16;
    IQ4_XS = 23, 256, 2 + 2 + QK_K / 2 + QK_K / 64;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, QK_K / 8 + QK_K / 16 + QK_K / 32;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 2 + 4 * 13;
    TQ2_0 = 35, 256, 2 + 64;
    MXFP4 = 39, 32, 1 + 16;
}

impl GgmlType {
    /// Whether [`crate::dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::Q8_0
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q4_K
                | Self::Q5_K
                | Self::Q6_K
        )
    }

    /// Bytes taken by `n_elements` values, or `None` if `n_elements` is not a whole number of blocks.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if n_elements % block != 0 {
            return None;
        }
        (n_elements / block).checked_mul(self.type_size() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
