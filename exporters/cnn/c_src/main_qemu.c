/* Bare-metal harness for qemu's MPS2 boards (mps2-an386 Cortex-M4, mps2-an500 Cortex-M7), run with
       qemu-system-arm -M mps2-an386 -nographic -semihosting-config enable=on,target=native -icount shift=6 -kernel model_qemu.elf
   Runs model_invoke() on the embedded test input and prints over semihosting:
     ES_CALIB <ticks of a 2001-instruction loop>  ES_EMPTY <ticks of an empty measurement>
     ES_TOTAL <ticks of model_invoke(), mod 2^32>  ES_SECONDS <CLK1HZ delta, to undo the 32-bit wrap>
     ES_NODE <i> <ticks>   (built with -DES_PROFILE)
     ES_OUT <output bytes, hex>
   Ticks: the FPGAIO COUNTER register (0x40028018), which qemu derives from its virtual clock at the board's
   25 MHz; with -icount shift=6 every instruction advances that clock by 64 ns, so instructions = ticks * 40 / 64.
   qemu does not model pipeline timing: these are instructions executed, not cycles. */
#include <string.h>
#include "model.h"

extern const int8_t es_test_input[MODEL_INPUT_BYTES];
extern uint32_t _sdata, _edata, _etext, _sbss, _ebss, _estack;
int main(void);

static int es_semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
static void es_puts(const char *s) { es_semihost(0x04, s); }  /* SYS_WRITE0 */
static void es_exit(int ok) { es_semihost(0x18, (const void *)(ok ? 0x20026 : 0x20023)); for (;;) { } }  /* SYS_EXIT */
static void es_putu(uint64_t v) {
    char b[24];
    int i = 23;
    b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    es_puts(b + i);
}

void es_reset(void) {
    uint32_t *s = &_etext, *d = &_sdata;
    while (d < &_edata) *d++ = *s++;
    for (d = &_sbss; d < &_ebss;) *d++ = 0;
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;  /* CPACR: enable the FPU (CP10, CP11) */
    __asm__ volatile("dsb\n\tisb");
    es_exit(main() == 0);
}
static void es_fault(void) { es_puts("ES_FAULT\n"); es_exit(0); }
__attribute__((section(".vectors"), used)) static const void *const es_vectors[16] = {
    &_estack, (const void *)es_reset, (const void *)es_fault, (const void *)es_fault, (const void *)es_fault,
    (const void *)es_fault, (const void *)es_fault};

uint32_t es_prof_now(void) { return *(volatile uint32_t *)0x40028018; }
static uint32_t es_seconds(void) { return *(volatile uint32_t *)0x40028010; }  /* FPGAIO CLK1HZ */

int main(void) {
    uint32_t t0 = es_prof_now();
    __asm__ volatile("movw r0, #1000\n1:\n\tsubs r0, #1\n\tbne 1b" ::: "r0", "cc");
    uint32_t calib = es_prof_now() - t0;
    t0 = es_prof_now();
    uint32_t empty = es_prof_now() - t0;
    memcpy(model_input(), es_test_input, MODEL_INPUT_BYTES);
    uint32_t s0 = es_seconds();
    t0 = es_prof_now();
    model_invoke();
    uint32_t total = es_prof_now() - t0, secs = es_seconds() - s0;
    es_puts("ES_CALIB "); es_putu(calib); es_puts("\nES_EMPTY "); es_putu(empty);
    es_puts("\nES_TOTAL "); es_putu(total); es_puts("\nES_SECONDS "); es_putu(secs); es_puts("\n");
#ifdef ES_PROFILE
    for (int32_t i = 0; i < MODEL_NODES; i++) {
        es_puts("ES_NODE "); es_putu((uint64_t)i); es_puts(" "); es_putu(es_prof_ticks[i]); es_puts("\n");
    }
#endif
    static const char hex[] = "0123456789abcdef";
    const int8_t *y = model_output();
    char line[2 * 32 + 2];
    es_puts("ES_OUT ");
    for (int32_t i = 0; i < MODEL_OUTPUT_BYTES; i += 32) {
        int32_t n = 0;
        for (int32_t j = i; j < i + 32 && j < MODEL_OUTPUT_BYTES; j++) {
            line[n++] = hex[((uint8_t)y[j]) >> 4];
            line[n++] = hex[((uint8_t)y[j]) & 15];
        }
        line[n] = 0;
        es_puts(line);
    }
    es_puts("\n");
    return 0;
}
