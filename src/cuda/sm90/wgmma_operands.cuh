// Operand lists of the inline-PTX MMA wrappers: the register names of an N-register
// accumulator ("{%0, ..., %N-1}", a string literal to splice into the asm template) and its
// read-write operands ("+f"(d[0]), ..., "+f"(d[N-1])). The wrappers then name only their
// shape, types and the operands after the accumulator, whose numbers start at N.
#pragma once

#define MLA_WG_ACC8_AT(d, i)                                                                   \
    "+f"(d[(i) + 0]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), \
        "+f"(d[(i) + 5]), "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define MLA_WG_ACC8(d) MLA_WG_ACC8_AT(d, 0)
#define MLA_WG_ACC16_AT(d, i) MLA_WG_ACC8_AT(d, i), MLA_WG_ACC8_AT(d, (i) + 8)
#define MLA_WG_ACC16(d) MLA_WG_ACC16_AT(d, 0)
#define MLA_WG_ACC32_AT(d, i) MLA_WG_ACC16_AT(d, i), MLA_WG_ACC16_AT(d, (i) + 16)
#define MLA_WG_ACC32(d) MLA_WG_ACC32_AT(d, 0)
#define MLA_WG_ACC64_AT(d, i) MLA_WG_ACC32_AT(d, i), MLA_WG_ACC32_AT(d, (i) + 32)
#define MLA_WG_ACC64(d) MLA_WG_ACC64_AT(d, 0)
#define MLA_WG_ACC128(d) MLA_WG_ACC64_AT(d, 0), MLA_WG_ACC64_AT(d, 64)

// Eight operand names from %a; the accumulator lists join them.
#define MLA_WG_R0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define MLA_WG_R8 "%8, %9, %10, %11, %12, %13, %14, %15"
#define MLA_WG_R16 "%16, %17, %18, %19, %20, %21, %22, %23"
#define MLA_WG_R24 "%24, %25, %26, %27, %28, %29, %30, %31"
#define MLA_WG_R32 "%32, %33, %34, %35, %36, %37, %38, %39"
#define MLA_WG_R40 "%40, %41, %42, %43, %44, %45, %46, %47"
#define MLA_WG_R48 "%48, %49, %50, %51, %52, %53, %54, %55"
#define MLA_WG_R56 "%56, %57, %58, %59, %60, %61, %62, %63"
#define MLA_WG_R64 "%64, %65, %66, %67, %68, %69, %70, %71"
#define MLA_WG_R72 "%72, %73, %74, %75, %76, %77, %78, %79"
#define MLA_WG_R80 "%80, %81, %82, %83, %84, %85, %86, %87"
#define MLA_WG_R88 "%88, %89, %90, %91, %92, %93, %94, %95"
#define MLA_WG_R96 "%96, %97, %98, %99, %100, %101, %102, %103"
#define MLA_WG_R104 "%104, %105, %106, %107, %108, %109, %110, %111"
#define MLA_WG_R112 "%112, %113, %114, %115, %116, %117, %118, %119"
#define MLA_WG_R120 "%120, %121, %122, %123, %124, %125, %126, %127"
#define MLA_WG_REGS8 "{" MLA_WG_R0 "}"
#define MLA_WG_REGS16 "{" MLA_WG_R0 ", " MLA_WG_R8 "}"
#define MLA_WG_REGS32 "{" MLA_WG_R0 ", " MLA_WG_R8 ", " MLA_WG_R16 ", " MLA_WG_R24 "}"
#define MLA_WG_REGS64 "{" MLA_WG_R0 ", " MLA_WG_R8 ", " MLA_WG_R16 ", " MLA_WG_R24 ", " MLA_WG_R32 ", " \
    MLA_WG_R40 ", " MLA_WG_R48 ", " MLA_WG_R56 "}"
#define MLA_WG_REGS128 "{" MLA_WG_R0 ", " MLA_WG_R8 ", " MLA_WG_R16 ", " MLA_WG_R24 ", " MLA_WG_R32 ", " \
    MLA_WG_R40 ", " MLA_WG_R48 ", " MLA_WG_R56 ", " MLA_WG_R64 ", " MLA_WG_R72 ", " MLA_WG_R80 ", " \
    MLA_WG_R88 ", " MLA_WG_R96 ", " MLA_WG_R104 ", " MLA_WG_R112 ", " MLA_WG_R120 "}"
